"""Learned models at inference: load once from ``weights/<name>/``, predict many.

A weights folder holds ``model.pt`` (a ``state_dict``) and ``manifest.json`` beside it
(nnU-Net v2 style: the metadata needed to reproduce the preprocessing travels with the
weights): ``sha256`` of ``model.pt``, ``task``, ``architecture``, ``input_spacing_mm``,
``intensity_window_hu`` and the training data description. The sha256 is checked at load;
a mismatch is an error, never a warning.

* :class:`L3Net` -- :meth:`L3Net.predict_l3_z` gives the L3 inferior-endplate z from coronal
  and sagittal MIPs of a :class:`~l3node.analysis.volume.Volume` (an independent second opinion
  beside the anatomy-based locator).
* :class:`TissueNet` -- :meth:`TissueNet.predict_tissues` labels one axial HU slice with
  :class:`~l3node.analysis.tissues.Tissue` values.

Device: ``"auto"`` takes CUDA when ``torch.cuda.is_available()``, else the CPU. A CUDA
out-of-memory error during prediction is logged and the call is retried on the CPU (the model
then stays on the CPU for later calls).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from l3node.analysis.models import build_model
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume
from l3node.config import AnalysisConfig
from l3node.errors import L3NodeError
from l3node.logs import get_logger

log = get_logger(__name__)

def shipped_weights_dir(candidates: tuple[Path, ...] | None = None) -> Path:
    """Where the shipped models (``l3_mip``, ``tissue_unet``) are: the repository's ``weights/``
    (a checkout, an editable install), else ``<prefix>/share/l3node/weights`` (``pip install .``,
    the container; see ``[tool.setuptools.data-files]``). The first that holds a model wins;
    the repository's folder when none does (the load error then names it)."""
    candidates = candidates or (Path(__file__).resolve().parents[2] / "weights",
                                Path(sys.prefix) / "share" / "l3node" / "weights")
    for folder in candidates:
        if any(folder.glob("*/manifest.json")):
            return folder
    return candidates[0]


WEIGHTS_DIR = shipped_weights_dir()
"""The shipped models' folder (:func:`shipped_weights_dir`); ``analysis.weights_dir`` overrides it."""
MANIFEST = "manifest.json"
WEIGHTS_FILE = "model.pt"

L3_PREPROCESS: dict[str, Any] = {"input_spacing_mm": [4.0, 3.0], "width_px": 128,
                                 "intensity_window_hu": [[-100.0, 600.0]]}
"""L3 net input: MIP rows every 4 mm in z, 3 mm lateral, 128 px wide (centred), one HU window.

The window saturates bone on purpose: the net should read bone *shape* (vertebrae, ribs,
sacrum), not bone density, which differs between scanners, patients and the phantoms."""
SEG_PREPROCESS: dict[str, Any] = {"input_spacing_mm": [2.0, 2.0],
                                  "intensity_window_hu": [[-250.0, 250.0], [-1000.0, 1000.0]]}
"""Segmentation input: slice at 2 mm pixels, two channels (soft-tissue and wide windows)."""


class ModelError(L3NodeError):
    """A weights folder is missing, corrupt (sha256 mismatch) or does not match the task."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def choose_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda"`` taken as asked.

    Raises
    ------
    ModelError
        If ``"cuda"`` is asked for and no CUDA device is available, or ``device`` is unknown.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
        return torch.device(device)
    raise ModelError(f"unknown device {device!r}; choose auto, cpu or cuda")


def read_manifest(folder: Path, task: str) -> dict[str, Any]:
    """Read and check ``folder/manifest.json`` against ``folder/model.pt``.

    Raises
    ------
    ModelError
        If either file is missing, the manifest is not valid JSON, its task differs from
        ``task``, or the sha256 of ``model.pt`` differs from the manifest's.
    """
    folder = Path(folder)
    manifest_path, weights_path = folder / MANIFEST, folder / WEIGHTS_FILE
    for path in (manifest_path, weights_path):
        if not path.is_file():
            raise ModelError(f"{path} is missing; train with `l3node train {task}` or restore the weights folder")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("task") != task:
        raise ModelError(f"{folder} holds a {manifest.get('task')!r} model, not {task!r}")
    actual = sha256_of(weights_path)
    if actual != manifest.get("sha256"):
        raise ModelError(f"{weights_path} sha256 {actual[:16]}... does not match manifest "
                         f"{str(manifest.get('sha256'))[:16]}...: weights corrupt or replaced")
    return manifest


class _LoadedModel:
    """A net loaded once with its manifest; moves to the CPU after a CUDA out-of-memory error."""

    task = ""

    def __init__(self, folder: str | Path, device: str = "auto"):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, self.task)
        self.device = choose_device(device)
        self.model = build_model(self.task, self.manifest["architecture"])
        state = torch.load(self.folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.model.eval().to(self.device)
        log.info("model_loaded", task=self.task, name=self.manifest.get("name"),
                 version=self.manifest.get("version"), device=str(self.device))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.folder.name))

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    def _run(self, *inputs: np.ndarray) -> np.ndarray:
        """Forward ``inputs`` (numpy, batch first) and return the output as numpy (float32)."""
        try:
            return self._forward(self.device, *inputs)
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            log.warning("cuda_out_of_memory_cpu_fallback", task=self.task)
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.model.to(self.device)
            return self._forward(self.device, *inputs)

    def _forward(self, device: torch.device, *inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device) for a in inputs]
            return self.model(*tensors).float().cpu().numpy()


# --------------------------------------------------------------------------- L3 level


def _window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def fit_width(image: np.ndarray, width: int, fill: float) -> np.ndarray:
    """Centre-crop or pad the last axis to ``width``."""
    w = image.shape[-1]
    if w >= width:
        start = (w - width) // 2
        return image[..., start:start + width]
    before = (width - w) // 2
    pad = [(0, 0)] * (image.ndim - 1) + [(before, width - w - before)]
    return np.pad(image, pad, constant_values=fill)


def mip_inputs(volume: Volume, preprocess: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Coronal and sagittal MIPs of ``volume`` resampled for the L3 net.

    Returns
    -------
    coronal, sagittal, z0_mm
        ``(Z, W)`` float32 images in 0..1 (row ``j`` at patient z ``z0_mm + j * dz``, superior
        rows last; coronal columns right -> left, sagittal columns anterior -> posterior).
    """
    p = preprocess or L3_PREPROCESS
    dz_out, lat_out = (float(v) for v in p["input_spacing_mm"])
    window = tuple(p["intensity_window_hu"][0])
    dz, drow, dcol = volume.spacing_mm
    hu = volume.hu
    coronal = hu.max(axis=1)  # (k, col)
    sagittal = hu.max(axis=2)  # (k, row)
    n_out = max(int(np.floor((hu.shape[0] - 1) * dz / dz_out)) + 1, 1)
    views = []
    for image, d_lat in ((coronal, dcol), (sagittal, drow)):
        w_out = max(int(round(image.shape[1] * d_lat / lat_out)), 1)
        rows = np.arange(n_out) * dz_out / dz
        cols = (np.arange(w_out) + 0.5) * lat_out / d_lat - 0.5
        grid = np.meshgrid(rows, cols, indexing="ij")
        # Anti-alias before going coarser (thin slices / small pixels).
        sigma = (max(dz_out / dz / 2.5, 0), max(lat_out / d_lat / 2.5, 0))
        smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma) if max(sigma) > 0.5 else image
        resampled = ndimage.map_coordinates(smooth, grid, order=1, mode="nearest")
        views.append(fit_width(_window(resampled, window), int(p["width_px"]), 0.0))
    return views[0], views[1], float(volume.origin_mm[2])


@dataclass(frozen=True)
class NeuralL3:
    """The L3 net's answer.

    Attributes
    ----------
    z_mm:
        L3 inferior endplate (patient z, mm) at the heatmap peak (sub-row refined).
    confidence:
        Heatmap probability mass within +-10 mm of the peak (0..1): low when the net hesitates
        between levels (or when L3 may be outside the scan, which the net was not trained on).
    peak_probability:
        Heatmap value of the peak row alone.
    model:
        ``name version`` of the weights used.
    """

    z_mm: float
    confidence: float
    peak_probability: float
    model: str


class L3Net(_LoadedModel):
    """The L3 level net; load once with :func:`load_l3_net`, then call :meth:`predict_l3_z`."""

    task = "l3"

    def predict_l3_z(self, volume: Volume) -> NeuralL3:
        """Predict the L3 inferior-endplate z of ``volume``.

        Raises
        ------
        ValueError
            If the volume has fewer than 2 slices.
        """
        if volume.hu.shape[0] < 2:
            raise ValueError("the L3 net needs a volume of at least 2 slices")
        t0 = time.perf_counter()
        coronal, sagittal, z0 = mip_inputs(volume, self.manifest["preprocess"])
        logits = self._run(coronal[None, None], sagittal[None, None])[0]
        z, confidence, peak = decode_heatmap(logits, z0, float(self.manifest["preprocess"]["input_spacing_mm"][0]))
        log.debug("neural_l3", z_mm=round(z, 1), confidence=round(confidence, 3),
                  elapsed_s=round(time.perf_counter() - t0, 3))
        return NeuralL3(z_mm=z, confidence=confidence, peak_probability=peak, model=f"{self.name} {self.version}")


def decode_heatmap(logits: np.ndarray, z0_mm: float, dz_mm: float) -> tuple[float, float, float]:
    """Per-row logits -> (z_mm at the sub-row refined peak, mass within +-10 mm, peak probability)."""
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    j = int(np.argmax(prob))
    lo, hi = max(j - 2, 0), min(j + 3, len(prob))
    refined = float((prob[lo:hi] * np.arange(lo, hi)).sum() / prob[lo:hi].sum())
    near = int(np.ceil(10.0 / dz_mm))
    mass = float(prob[max(j - near, 0):j + near + 1].sum())
    return z0_mm + refined * dz_mm, mass, float(prob[j])


# --------------------------------------------------------------------------- tissues


def seg_input(hu: np.ndarray, pixel_mm: tuple[float, float], preprocess: dict[str, Any] | None = None) -> np.ndarray:
    """One axial slice resampled to the net's pixel size, windowed: ``(C, H, W)`` float32."""
    p = preprocess or SEG_PREPROCESS
    target = [float(v) for v in p["input_spacing_mm"]]
    zoom = (pixel_mm[0] / target[0], pixel_mm[1] / target[1])
    resampled = ndimage.zoom(hu.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    return np.stack([_window(resampled, tuple(w)) for w in p["intensity_window_hu"]])


def logits_to_slice(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` logits at the net's pixel size -> softmax ``(C, *shape)`` on the slice grid."""
    with torch.inference_mode():
        t = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=tuple(shape), mode="bilinear",
                                            align_corners=False)
        return torch.softmax(t[0], dim=0).numpy()


class TissueNet(_LoadedModel):
    """The tissue U-Net; load once with :func:`load_tissue_net`, then :meth:`predict_tissues`."""

    task = "seg"

    def probabilities(self, hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
        """Class probabilities ``(5, rows, cols)`` on the input slice's own pixel grid."""
        x = seg_input(hu, pixel_mm, self.manifest["preprocess"])
        stride = int(self.manifest["architecture"].get("stride", 8))
        _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, (-h) % stride), (0, (-w) % stride)), mode="edge")
        logits = self._run(padded[None])[0][:, :h, :w]
        return logits_to_slice(logits, hu.shape)

    def predict_tissues(self, hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
        """Tissue labels (uint8, :class:`~l3node.analysis.tissues.Tissue` values, 0 elsewhere).

        Parameters
        ----------
        hu:
            One axial slice ``(row, col)`` in HU, package orientation.
        pixel_mm:
            ``(row spacing, column spacing)`` in mm.

        Raises
        ------
        ValueError
            If ``hu`` is not 2D.
        """
        if hu.ndim != 2:
            raise ValueError(f"predict_tissues takes one 2D slice, got shape {hu.shape}")
        return self.probabilities(hu, pixel_mm).argmax(axis=0).astype(np.uint8)


def save_weights(model: torch.nn.Module, folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/model.pt`` (float32 state dict) and ``manifest.json`` with its sha256.

    Returns the folder. The weights file is written first (via a temporary name), so a
    manifest never points at a partial file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(folder / WEIGHTS_FILE)
    full = {**manifest, "sha256": sha256_of(folder / WEIGHTS_FILE),
            "weights_bytes": (folder / WEIGHTS_FILE).stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return folder


def load_l3_net(folder: str | Path | None = None, device: str = "auto") -> L3Net:
    """Load the L3 net (default ``weights/l3_mip``). Raises :class:`ModelError` (see :func:`read_manifest`)."""
    return L3Net(folder or WEIGHTS_DIR / "l3_mip", device)


def load_tissue_net(folder: str | Path | None = None, device: str = "auto") -> TissueNet:
    """Load the tissue net (default ``weights/tissue_unet``). Raises :class:`ModelError`."""
    return TissueNet(folder or WEIGHTS_DIR / "tissue_unet", device)


@functools.lru_cache(maxsize=4)
def _cached(task: str, folder: str, device: str) -> _LoadedModel:
    return L3Net(folder, device) if task == "l3" else TissueNet(folder, device)


def preload(task: str, folder: str | Path, device: str = "auto") -> None:
    """Load a model into the per-process cache now (service start-up), not on the first study.

    Raises
    ------
    ModelError
        If the weights folder is missing or corrupt.
    """
    _cached(task, str(folder), device)


def predict_l3_z(volume: Volume, *, folder: str | Path | None = None, device: str = "auto") -> NeuralL3:
    """:meth:`L3Net.predict_l3_z` with the net loaded once per process (default ``weights/l3_mip``).

    Raises
    ------
    ModelError
        If the weights folder is missing or corrupt.
    """
    net = _cached("l3", str(folder or WEIGHTS_DIR / "l3_mip"), device)
    return net.predict_l3_z(volume)  # type: ignore[attr-defined]


def predict_tissues(hu: np.ndarray, pixel_mm: tuple[float, float], *, folder: str | Path | None = None,
                    device: str = "auto") -> np.ndarray:
    """:meth:`TissueNet.predict_tissues` with the net loaded once per process (default ``weights/tissue_unet``).

    Raises
    ------
    ModelError
        If the weights folder is missing or corrupt.
    """
    net = _cached("seg", str(folder or WEIGHTS_DIR / "tissue_unet"), device)
    return net.predict_tissues(hu, pixel_mm)  # type: ignore[attr-defined]


def weights_root(config: AnalysisConfig) -> Path:
    """The folder of trained models: ``analysis.weights_dir``, or the weights/ shipped with l3node."""
    return Path(config.weights_dir) if config.weights_dir else WEIGHTS_DIR


def tissues_in_hu_ranges(compartments: np.ndarray, hu: np.ndarray, config: AnalysisConfig) -> np.ndarray:
    """The tissue definition applied to the network's labels: compartment ∩ HU range.

    The network draws regions (at 2 mm, blurred at their edges); which pixels of them are
    tissue follows the same HU ranges as the rules: muscle-compartment pixels (muscle or
    IMAT) in the muscle range are muscle, in the fat range IMAT; VAT and SAT keep only
    fat-range pixels. On the 104 development phantoms this takes the network's muscle Dice
    from 0.944 to 0.978, and on the real silver masks from 0.773 to 0.802 (weights of 27 Nov).
    """
    muscle_range = (hu >= config.muscle_hu.min) & (hu <= config.muscle_hu.max)
    fat_range = (hu >= config.fat_hu.min) & (hu <= config.fat_hu.max)
    in_muscle = (compartments == Tissue.SKELETAL_MUSCLE) | (compartments == Tissue.IMAT)
    labels = np.zeros(compartments.shape, np.uint8)
    labels[in_muscle & muscle_range] = Tissue.SKELETAL_MUSCLE
    labels[in_muscle & fat_range] = Tissue.IMAT
    for fat in (Tissue.VAT, Tissue.SAT):
        labels[(compartments == fat) & fat_range] = fat
    return labels


def segment_slice_network(hu: np.ndarray, pixel_mm: tuple[float, float], config: AnalysisConfig | None = None) -> np.ndarray:
    """Tissue labels of one slice by the tissue network (``analysis.segmentation: network``).

    The counterpart of :func:`l3node.analysis.segment.segment_slice` (same arguments and
    labels): the network's regions, then :func:`tissues_in_hu_ranges`.

    Raises
    ------
    ModelError
        If the weights folder is missing or corrupt.
    """
    config = config or AnalysisConfig()
    regions = predict_tissues(hu, pixel_mm, folder=weights_root(config) / "tissue_unet", device=config.device)
    return tissues_in_hu_ranges(regions, np.asarray(hu), config)
