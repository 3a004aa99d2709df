"""``l3node train l3|seg``: build the dataset, train, validate, write ``weights/<name>/``.

:func:`main_train` is what the CLI calls. It trains on phantoms of every variant (and on a
site's labelled cases when given: NIfTI, or DICOM CT + SEG), validates on held-out phantoms of every variant (seeds
never used for training), and writes ``model.pt`` and ``manifest.json`` (sha256, task,
preprocessing: input spacing and intensity window, architecture, parameter count, training
data, epochs, validation metrics, device, torch version, date).

Retrain the shipped weights (measured on the shared 2-core CPU: l3 282 s, seg 749 s, plus
~12 min to generate the 261 phantoms once, see :mod:`l3node.train.datasets`; on an NVIDIA H200,
which ``--device auto`` takes, seg 42 s)::

    python -m l3node.train.train_cli l3 weights/l3_mip --phantoms-per-variant 24 --epochs 30
    python -m l3node.train.train_cli seg weights/tissue_unet --phantoms-per-variant 24 --epochs 12
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from l3node.analysis.models import architecture_of, parameter_count
from l3node.analysis.neural import L3_PREPROCESS, SEG_PREPROCESS, choose_device, save_weights
from l3node.analysis.tissues import Tissue
from l3node.logs import get_logger
from l3node.train import datasets

log = get_logger(__name__)

MODEL_VERSION = "0.1.0"
NAMES = {"l3": "l3_mip", "seg": "tissue_unet"}


def main_train(task: str, out: Path, *, phantoms_per_variant: int, epochs: int, site_data: list[Path] | None,
               device: str, val_per_variant: int | None = None, variants: Sequence[str] | None = None,
               cache_dir: Path | None = datasets.DEFAULT_CACHE, seed: int = 0,
               architecture: dict[str, Any] | None = None) -> Path:
    """Train the ``task`` model (``"l3"`` or ``"seg"``) and write its weights folder ``out``.

    Parameters
    ----------
    task:
        ``"l3"`` (L3 level from MIPs) or ``"seg"`` (tissue U-Net).
    out:
        Weights folder to write (``model.pt`` + ``manifest.json``); created if needed.
    phantoms_per_variant:
        Training phantoms of each variant (0: site data only).
    epochs:
        Passes over the training set.
    site_data:
        Folders of labelled site cases (layout in :mod:`l3node.train.datasets`), added to training.
    device:
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    val_per_variant:
        Held-out validation phantoms per variant (default: a fifth of ``phantoms_per_variant``, >= 1).
    variants:
        Variants to use (default: all of :data:`l3node.phantom.VARIANTS`).
    cache_dir:
        Where generated phantom arrays are cached (None: no cache).
    seed:
        Seeds weight initialisation, shuffling and augmentation.
    architecture:
        Overrides of the net's size (e.g. ``{"channels": [4, 8]}`` for tests).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        For an unknown task, or when there is no training data.
    l3node.analysis.neural.ModelError
        If ``device`` asks for CUDA and none is available.
    """
    from l3node.phantom import VARIANTS

    if task not in NAMES:
        raise ValueError(f"unknown task {task!r}; choose l3 or seg")
    torch_device = choose_device(device)
    variants = tuple(variants or VARIANTS)
    n_val = val_per_variant if val_per_variant is not None else max(1, round(phantoms_per_variant / 5))
    train_pairs = datasets.phantom_seeds(variants, phantoms_per_variant, datasets.TRAIN_FIRST_SEED)
    val_pairs = datasets.phantom_seeds(variants, n_val, datasets.VAL_FIRST_SEED)
    log.info("train_start", task=task, n_train_phantoms=len(train_pairs), n_val_phantoms=len(val_pairs),
             device=str(torch_device))
    train = datasets.phantom_samples(train_pairs, cache_dir)
    val = datasets.phantom_samples(val_pairs, cache_dir)
    site_paths = [str(p) for p in site_data or []]
    for folder in site_data or []:
        train += datasets.site_l3_samples(folder) if task == "l3" else datasets.site_seg_samples(folder)
    if not train:
        raise ValueError("no training data: give phantoms_per_variant > 0 or site_data")

    if task == "l3":
        from l3node.train.train_l3 import train_l3

        model, history = train_l3(train, val, epochs=epochs, device=torch_device, seed=seed, architecture=architecture)
        preprocess = dict(L3_PREPROCESS)
        extra: dict[str, Any] = {"output": "softmax over MIP rows; z = peak row (sub-row refined) * dz + z0; "
                                           "confidence = probability mass within 10 mm of the peak",
                                 "target": "L3 inferior endplate (lower boundary of the L3 body)"}
    else:
        from l3node.train.train_seg import train_seg

        model, history = train_seg(train, val, epochs=epochs, device=torch_device, seed=seed, architecture=architecture)
        preprocess = dict(SEG_PREPROCESS)
        extra = {"labels": {"0": "background", **{str(int(t)): t.key for t in Tissue}},
                 "output": "softmax over 5 classes at 2 mm, upsampled (bilinear logits) to the slice grid"}

    manifest = {
        "name": NAMES[task],
        "version": MODEL_VERSION,
        "task": task,
        "input_spacing_mm": preprocess["input_spacing_mm"],
        "intensity_window_hu": preprocess["intensity_window_hu"],
        "preprocess": preprocess,
        "architecture": architecture_of(model),
        "parameter_count": parameter_count(model),
        **extra,
        "training_data": {
            "phantoms_per_variant": phantoms_per_variant,
            "variants": list(variants),
            "n_train_phantoms": len(train_pairs),
            "train_seeds": f"variant index i, j < {phantoms_per_variant}: {datasets.TRAIN_FIRST_SEED} + 10000 i + j",
            "val_phantoms_per_variant": n_val,
            "val_seeds": f"variant index i, j < {n_val}: {datasets.VAL_FIRST_SEED} + 10000 i + j",
            "phantom_options": "matrix 256; slice thickness 3/4/5 mm; scan range abdomen_pelvis 60 %, "
                               "chest_abdomen_pelvis 30 %, l3_edge 10 %; other acquisition options random "
                               "(l3node.train.datasets.phantom_options)",
            "site_data": site_paths,
            "n_site_samples": len(train) - len(train_pairs),
            "cache_version": datasets.CACHE_VERSION,
        },
        "epochs": epochs,
        "seed": seed,
        "train_time_s": history["train_time_s"],
        "history": history["epochs"],
        "validation": history["validation"],
        "device": str(torch_device) + (f" ({torch.cuda.get_device_name(torch_device)})"
                                       if torch_device.type == "cuda" else f" ({platform.processor() or 'cpu'})"),
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    save_weights(model, out, manifest)
    log.info("train_done", task=task, out=str(out), train_time_s=history["train_time_s"])
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m l3node.train.train_cli {l3,seg} OUT [--phantoms-per-variant N] [--epochs E] ...``."""
    parser = argparse.ArgumentParser(description="train an l3node model")
    parser.add_argument("task", choices=sorted(NAMES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--phantoms-per-variant", type=int, default=24)
    parser.add_argument("--val-per-variant", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--site-data", type=Path, action="append", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=datasets.DEFAULT_CACHE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    main_train(args.task, args.out, phantoms_per_variant=args.phantoms_per_variant, epochs=args.epochs,
               site_data=args.site_data, device=args.device, val_per_variant=args.val_per_variant,
               cache_dir=args.cache, seed=args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
