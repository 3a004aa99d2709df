"""Training data for the learned models: phantoms (cached) and a site's labelled CT.

Phantoms (:func:`phantom_sample`): one :func:`l3node.phantom.make_phantom` per (variant, seed),
matrix 256, slice thickness 3, 4 or 5 mm, every other acquisition option random (kernel, phase,
position, arms, metal, oral contrast), and a scan range that always contains L3
(``abdomen_pelvis`` 60 %, ``chest_abdomen_pelvis`` 30 %, ``l3_edge`` 10 %). From each phantom
the cache keeps what both nets need, as a compressed ``.npz`` (never committed; default
``var/train_cache/``):

* the L3 net's coronal and sagittal MIPs (see :func:`l3node.analysis.neural.mip_inputs`; stored
  in the window :data:`MIP_STORE_WINDOW_HU`, re-windowed at training) and the true L3
  inferior-endplate z;
* seven axial slices (the L3 slice and six from 40 mm below it to 150 mm above it, about T11:
  liver, spleen and kidneys in view, as on real slices near L3) in HU with their tissue labels,
  at the phantom's own pixel size.

Seeds: variant ``i`` (index in :data:`l3node.phantom.VARIANTS`) uses seeds
``first_seed + 10000 * i + j``; training uses ``first_seed = 1000``, validation
``first_seed = 900000``, so the two never overlap.

Site data (:func:`site_l3_samples`, :func:`site_seg_samples`): a folder of case folders (or one
case folder). A case is either DICOM -- the CT series and a DICOM SEG of it, see
:mod:`l3node.train.site_dicom` -- or NIfTI, with

* ``ct.nii.gz`` -- the CT;
* for L3: ``vertebrae.nii.gz`` (vertebra label map) and ``vertebrae.json`` (``{"29": "L3", ...}``,
  label value -> name), optionally ``vertebral_bodies_and_discs.nii.gz`` (1 = body);
* for segmentation: ``tissues.nii.gz`` with :class:`~l3node.analysis.tissues.Tissue` values
  (1 muscle, 2 IMAT, 3 VAT, 4 SAT, 0 other); every labelled slice (at most 20, evenly spaced)
  becomes a sample.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from l3node.analysis.locate_l3 import inferior_endplate_z_from_labels
from l3node.analysis.neural import L3_PREPROCESS, mip_inputs
from l3node.analysis.volume import Volume, read_label_nifti, read_nifti
from l3node.logs import get_logger
from l3node.train import site_dicom

log = get_logger(__name__)

CACHE_VERSION = "v6"
"""Bumped whenever the phantoms or the sampled slices change (v4: back muscles fattier than the
other muscles; v5: every bowel loop's wall goes all round its content; v6: the bowel and stomach
walls enhance in the arterial and portal phases; v3 was a trial cache, never committed)."""
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "var" / "train_cache"
TRAIN_FIRST_SEED = 1000
VAL_FIRST_SEED = 900000
SCAN_RANGES_WITH_L3 = ("abdomen_pelvis", "chest_abdomen_pelvis", "l3_edge")
SEG_SLICES_PER_PHANTOM = 7
SEG_WINDOW_MM = (-40.0, 150.0)
"""Tissue training slices are drawn this far below and above the L3 inferior endplate."""
MIP_STORE_WINDOW_HU = (-100.0, 1300.0)
"""MIPs are cached in this window (0..1); training re-windows them to the model's (narrower) window."""
_STORE_PREPROCESS = {**L3_PREPROCESS, "intensity_window_hu": [list(MIP_STORE_WINDOW_HU)]}


def rewindow(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A cached MIP (0..1 in :data:`MIP_STORE_WINDOW_HU`) in another window inside it (0..1)."""
    s_lo, s_hi = MIP_STORE_WINDOW_HU
    hu = image.astype(np.float32) * (s_hi - s_lo) + s_lo
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def phantom_seeds(variants: Iterable[str], n_per_variant: int, first_seed: int) -> list[tuple[str, int]]:
    """``(variant, seed)`` pairs, ``n_per_variant`` of each, seeds as in the module docstring."""
    from l3node.phantom import VARIANTS

    pairs = []
    for variant in variants:
        i = VARIANTS.index(variant)
        pairs += [(variant, first_seed + 10000 * i + j) for j in range(n_per_variant)]
    return pairs


def phantom_options(seed: int) -> dict[str, Any]:
    """The acquisition options forced for training phantom ``seed`` (the rest stays random)."""
    rng = np.random.default_rng([seed, 314159])
    return {"matrix": 256, "slice_thickness_mm": float(rng.choice([3.0, 4.0, 5.0])),
            "scan_range": str(rng.choice(SCAN_RANGES_WITH_L3, p=[0.6, 0.3, 0.1]))}


def _seg_slices(volume: Volume, l3_z: float, rng: np.random.Generator) -> list[int]:
    k_l3 = volume.slice_index_at(l3_z) if volume.contains_z(l3_z) else 0
    z = volume.z_mm
    window = np.nonzero((z >= l3_z + SEG_WINDOW_MM[0]) & (z <= l3_z + SEG_WINDOW_MM[1]))[0]
    others = rng.choice(window, size=min(SEG_SLICES_PER_PHANTOM - 1, len(window)), replace=False)
    return [k_l3, *sorted(int(k) for k in others if k != k_l3)]


def make_phantom_sample(variant: str, seed: int) -> dict[str, np.ndarray]:
    """Generate one phantom and extract the arrays both nets train on (no cache)."""
    from l3node.phantom import make_phantom

    phantom = make_phantom(variant, seed, **phantom_options(seed))
    volume = phantom.volume
    l3_z = phantom.ground_truth["l3_inferior_endplate_z_mm"]
    if l3_z is None:
        raise ValueError(f"phantom {variant}/{seed} has no L3 in its scan range")
    coronal, sagittal, z0 = mip_inputs(volume, _STORE_PREPROCESS)
    ks = _seg_slices(volume, float(l3_z), np.random.default_rng([seed, 2718]))
    hu = np.clip(np.rint(volume.hu[ks]), -1024, 3071).astype(np.int16)
    return {"coronal": coronal.astype(np.float16), "sagittal": sagittal.astype(np.float16),
            "z0_mm": np.float64(z0), "l3_z_mm": np.float64(l3_z), "seg_hu": hu,
            "seg_labels": phantom.tissue_labels[ks].astype(np.uint8),
            "seg_pixel_mm": np.array(volume.spacing_mm[1:], dtype=np.float64),
            "slice_thickness_mm": np.float64(volume.spacing_mm[0])}


def phantom_sample(variant: str, seed: int, cache_dir: Path | None = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """The training arrays of phantom (``variant``, ``seed``), from the cache when present.

    Raises
    ------
    ValueError
        If the phantom cannot be made (unknown variant, L3 outside the scan).
    """
    if cache_dir is None:
        return make_phantom_sample(variant, seed)
    path = Path(cache_dir) / CACHE_VERSION / f"{variant}_{seed}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    sample = make_phantom_sample(variant, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **sample)
    tmp.replace(path)
    return sample


def phantom_samples(pairs: list[tuple[str, int]], cache_dir: Path | None = DEFAULT_CACHE) -> list[dict[str, Any]]:
    """:func:`phantom_sample` of every pair, each tagged with ``variant`` and ``seed``."""
    samples = []
    t0 = time.perf_counter()
    for n, (variant, seed) in enumerate(pairs, 1):
        sample = dict(phantom_sample(variant, seed, cache_dir))
        sample.update(variant=variant, seed=seed, source="phantom")
        samples.append(sample)
        if n % 20 == 0:
            log.info("phantom_samples_progress", done=n, total=len(pairs),
                     elapsed_s=round(time.perf_counter() - t0, 1))
    return samples


def _case_folders(root: Path, required: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Case folders in ``root`` (itself or its subfolders): ``(folder, "nifti")`` where the
    ``required`` files are, ``(folder, "dicom")`` where a DICOM SEG is (:mod:`l3node.train.site_dicom`)."""
    root = Path(root)
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    cases = []
    for case in candidates:
        if all((case / name).is_file() for name in required):
            cases.append((case, "nifti"))
        elif site_dicom.is_dicom_case(case):
            cases.append((case, "dicom"))
    if not cases:
        raise ValueError(f"{root}: no case folder with {', '.join(required)}, nor one with a DICOM SEG and its CT")
    return cases


def site_l3_samples(root: str | Path) -> list[dict[str, Any]]:
    """L3 samples from labelled site CT (layout in the module docstring).

    Raises
    ------
    ValueError
        If no case is found, or a case's labels lack L3 or do not match its CT.
    """
    samples = []
    for case, kind in _case_folders(Path(root), ("ct.nii.gz", "vertebrae.nii.gz", "vertebrae.json")):
        if kind == "dicom":
            volume, seg = site_dicom.read_dicom_case(case)
            l3_z = inferior_endplate_z_from_labels(site_dicom.vertebra_mask(seg, volume, "L3").astype(np.uint8),
                                                   volume, 1)
        else:
            names = {int(k): str(v) for k, v in json.loads((case / "vertebrae.json").read_text()).items()}
            l3 = [k for k, v in names.items() if v.upper() == "L3"]
            if not l3:
                raise ValueError(f"{case}/vertebrae.json names no L3")
            volume = read_nifti(case / "ct.nii.gz")
            labels = read_label_nifti(case / "vertebrae.nii.gz")
            bodies_path = case / "vertebral_bodies_and_discs.nii.gz"
            body = read_label_nifti(bodies_path) == 1 if bodies_path.is_file() else None
            l3_z = inferior_endplate_z_from_labels(labels, volume, l3[0], body)
        coronal, sagittal, z0 = mip_inputs(volume, _STORE_PREPROCESS)
        samples.append({"coronal": coronal, "sagittal": sagittal, "z0_mm": z0, "l3_z_mm": l3_z,
                        "variant": "site", "seed": -1, "source": str(case)})
    return samples


def site_seg_samples(root: str | Path, max_slices: int = 20) -> list[dict[str, Any]]:
    """Segmentation samples from labelled site CT (layout in the module docstring).

    Raises
    ------
    ValueError
        If no case is found, a case has no labelled slice, or its labels do not match its CT.
    """
    samples = []
    for case, kind in _case_folders(Path(root), ("ct.nii.gz", "tissues.nii.gz")):
        if kind == "dicom":
            volume, seg = site_dicom.read_dicom_case(case)
            labels = site_dicom.tissue_labels(seg, volume)
        else:
            volume = read_nifti(case / "ct.nii.gz")
            labels = read_label_nifti(case / "tissues.nii.gz")
        if labels.shape != volume.hu.shape:
            raise ValueError(f"{case}: tissues {labels.shape} do not match ct {volume.hu.shape}")
        labelled = np.nonzero(labels.any(axis=(1, 2)))[0]
        if not len(labelled):
            raise ValueError(f"{case}: no slice carries a tissue label")
        ks = labelled[np.linspace(0, len(labelled) - 1, min(max_slices, len(labelled))).astype(int)]
        samples.append({"seg_hu": volume.hu[ks].astype(np.int16), "seg_labels": labels[ks].astype(np.uint8),
                        "seg_pixel_mm": np.array(volume.spacing_mm[1:]), "variant": "site", "seed": -1,
                        "source": str(case)})
    return samples


def main(argv: list[str] | None = None) -> int:
    """Fill the phantom cache: ``python -m l3node.train.datasets --per-variant 24 [--shard 0/2]``."""
    from l3node.phantom import VARIANTS

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--per-variant", type=int, default=20)
    parser.add_argument("--val", type=int, default=None,
                        help="validation phantoms per variant (default: a fifth of --per-variant, as main_train)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--shard", default="0/1", help="i/n: this worker makes every n-th phantom from i")
    args = parser.parse_args(argv)
    n_val = args.val if args.val is not None else max(1, round(args.per_variant / 5))
    train = phantom_seeds(VARIANTS, args.per_variant, TRAIN_FIRST_SEED)
    # Interleave variants so that any prefix of the work is balanced across variants.
    train = [train[i * args.per_variant + j] for j in range(args.per_variant) for i in range(len(VARIANTS))]
    index, count = (int(v) for v in args.shard.split("/"))
    pairs = (phantom_seeds(VARIANTS, n_val, VAL_FIRST_SEED) + train)[index::count]
    t0 = time.perf_counter()
    for variant, seed in pairs:
        phantom_sample(variant, seed, args.cache)
    print(f"{len(pairs)} phantoms cached in {args.cache} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
