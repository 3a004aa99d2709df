"""Train the L3 level net (:class:`~l3node.analysis.models.L3HeatmapNet`) on MIPs.

Target: a Gaussian (sigma = one 4 mm row) over the MIP rows centred on the true L3 inferior
endplate; loss: cross-entropy between that target and the softmax over rows. Augmentation:
random cropping of the scan's top and/or bottom (keeping L3 inside), left-right flip of the
coronal view, z and lateral scaling (0.85-1.15), lateral shift, intensity gamma
and gain. Optimiser: AdamW with a cosine learning rate.
Everything random is seeded.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from l3node.analysis.models import L3HeatmapNet
from l3node.analysis.neural import L3_PREPROCESS, fit_width, decode_heatmap
from l3node.train.datasets import rewindow
from l3node.logs import get_logger

log = get_logger(__name__)

DZ_MM = float(L3_PREPROCESS["input_spacing_mm"][0])
SUCCESS_MM = 10.0
WINDOW_HU = tuple(L3_PREPROCESS["intensity_window_hu"][0])


def _views(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return rewindow(sample["coronal"], WINDOW_HU), rewindow(sample["sagittal"], WINDOW_HU)


def _augment(sample: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    cor, sag = _views(sample)
    target = (float(sample["l3_z_mm"]) - float(sample["z0_mm"])) / DZ_MM
    if rng.random() < 0.7:
        # Body proportions differ between people (and between phantoms and people).
        z_scale, lat_scale = float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15))
        w = cor.shape[1]
        cor = ndimage.zoom(cor, (z_scale, lat_scale), order=1)
        sag = ndimage.zoom(sag, (z_scale, lat_scale), order=1)
        cor, sag = fit_width(cor, w, 0.0), fit_width(sag, w, 0.0)
        n_in = len(sample["coronal"])
        target = target * (cor.shape[0] - 1) / max(n_in - 1, 1)  # zoom aligns the first and last rows
    n = cor.shape[0]
    if rng.random() < 0.5 and n > 40:
        t = int(round(target))
        lo = int(rng.integers(0, max(t - 15, 0) + 1)) if rng.random() < 0.6 else 0
        hi = n - int(rng.integers(0, max(n - t - 16, 0) + 1)) if rng.random() < 0.6 else n
        if hi - lo >= 30:
            cor, sag, target = cor[lo:hi], sag[lo:hi], target - lo
    if rng.random() < 0.5:
        cor = cor[:, ::-1]
    shift = int(rng.integers(-8, 9))
    cor, sag = np.roll(cor, shift, axis=1), np.roll(sag, int(rng.integers(-8, 9)), axis=1)
    gamma, gain = float(np.exp(rng.uniform(-0.4, 0.4))), float(rng.uniform(0.8, 1.25))
    return gain * cor ** gamma, gain * sag ** gamma, target


def _batch(items: list[tuple[np.ndarray, np.ndarray, float]], device: torch.device):
    z = max(c.shape[0] for c, _, _ in items)
    w = items[0][0].shape[1]
    cor = np.zeros((len(items), 1, z, w), np.float32)
    sag = np.zeros_like(cor)
    mask = np.zeros((len(items), z), bool)
    target = np.zeros((len(items), z), np.float32)
    rows = np.arange(z)
    for i, (c, s, t) in enumerate(items):
        cor[i, 0, :len(c)], sag[i, 0, :len(s)] = c, s
        mask[i, :len(c)] = True
        g = np.exp(-0.5 * (rows - t) ** 2) * mask[i]
        target[i] = g / g.sum()
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return to(cor), to(sag), to(mask), to(target)


def evaluate(model: L3HeatmapNet, samples: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Absolute z error (mm) of the heatmap peak on whole (uncropped) samples, overall and per variant."""
    model.eval()
    errors: dict[str, list[float]] = {}
    with torch.inference_mode():
        for s in samples:
            cor_np, sag_np = _views(s)
            cor = torch.from_numpy(cor_np)[None, None].to(device)
            sag = torch.from_numpy(sag_np)[None, None].to(device)
            logits = model(cor, sag)[0].float().cpu().numpy()
            z, _, _ = decode_heatmap(logits, float(s["z0_mm"]), DZ_MM)
            errors.setdefault(str(s["variant"]), []).append(abs(z - float(s["l3_z_mm"])))
    return summarise_errors(errors)


def summarise_errors(errors: dict[str, list[float]]) -> dict[str, Any]:
    def stats(e: list[float]) -> dict[str, float | int]:
        a = np.asarray(e)
        return {"n": int(len(a)), "mean_abs_error_mm": round(float(a.mean()), 2),
                "median_abs_error_mm": round(float(np.median(a)), 2), "max_abs_error_mm": round(float(a.max()), 2),
                "pct_within_10mm": round(100.0 * float((a < SUCCESS_MM).mean()), 1)}

    every = [x for e in errors.values() for x in e]
    return {"overall": stats(every), "per_variant": {k: stats(v) for k, v in sorted(errors.items())}}


def train_l3(train: list[dict[str, Any]], val: list[dict[str, Any]], *, epochs: int, device: torch.device,
             seed: int = 0, batch_size: int = 8, lr: float = 2e-3,
             architecture: dict[str, Any] | None = None) -> tuple[L3HeatmapNet, dict[str, Any]]:
    """Train from samples (see :mod:`l3node.train.datasets`); returns the net and a history.

    Raises
    ------
    ValueError
        If ``train`` is empty.
    """
    if not train:
        raise ValueError("no training samples")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = architecture or {}
    model = L3HeatmapNet(tuple(arch.get("channels", (8, 16, 24))), int(arch.get("z_channels", 32)),
                         tuple(arch.get("dilations", (1, 2, 4, 8, 16, 32, 1)))).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(train) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    history: dict[str, Any] = {"epochs": []}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        losses = []
        for b in range(0, len(order), batch_size):
            cor, sag, mask, target = _batch([_augment(train[i], rng) for i in order[b:b + batch_size]], device)
            logits = model(cor, sag).masked_fill(~mask, -1e4)
            loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4),
                 "elapsed_s": round(time.perf_counter() - t0, 1)}
        if val and (epoch + 1 == epochs or (epoch + 1) % 5 == 0):
            entry["val"] = evaluate(model, val, device)["overall"]
        history["epochs"].append(entry)
        log.info("train_l3_epoch", **{k: v for k, v in entry.items() if k != "val"}, **entry.get("val", {}))
    history["validation"] = evaluate(model, val, device) if val else None
    history["train_time_s"] = round(time.perf_counter() - t0, 1)
    return model, history
