"""Evaluate tissue segmentation: Dice, CSA error, Bland-Altman plots, tables.

CSA error follows the L3SEG-net paper: ``|GT - pred| / GT x 100`` (%), per tissue
and slice. Two kinds of cases:

* ``phantom:<variant>:<seed>`` -- a generated phantom; its exact tissue labels
  on the L3 slice are the ground truth for all four tissues.
* a folder with ``ct.nii.gz`` and silver reference masks (``skeletal_muscle``,
  ``subcutaneous_fat``, ``torso_fat`` ``.nii.gz``, as in
  ``shared/data/ts_example_ct_sm``), optionally ``<folder>@<k0>-<k1>`` to choose
  slices. There the comparisons are: skeletal muscle vs ours, subcutaneous fat vs
  our SAT, and torso fat vs our VAT + IMAT. Torso fat is *not* VAT: it is all fat
  inside the body wall (thoracic too, fat between the back muscles included), so
  that row measures agreement of a wider region and is reported, not targeted.
  Those comparison names start with ``silver_`` so they never pool with phantom rows.
  Our tissues are a compartment *within an HU range*; the silver masks are not
  thresholded (on ``ts_example_ct_sm`` 5 % of the reference muscle pixels lie below
  -29 HU). The ``..._in_hu`` rows compare like with like: the reference mask within
  the same HU range (``config.muscle_hu`` / ``config.fat_hu``) against ours. They are
  reported beside the plain rows, never instead of them.
* a folder with a site's DICOM CT series and a DICOM SEG of its tissues
  (:mod:`l3node.train.site_dicom`; e.g. the node's own SEG, corrected by a reader), optionally
  ``@<k0>-<k1>``: every slice with a tissue label is compared, tissue by tissue, in rows
  named ``site_<tissue>`` (they never pool with phantom rows either).

Command line: ``l3node evaluate seg CASES...`` calls :func:`main_evaluate_seg`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import structlog

from l3node.analysis.segment import segment_slice
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import read_label_nifti, read_nifti
from l3node.config import AnalysisConfig
from l3node.train import site_dicom

log = structlog.get_logger(__name__)

Segmenter = Callable[[np.ndarray, tuple[float, float], AnalysisConfig], np.ndarray]

REFERENCE_MASKS: dict[str, tuple[str, tuple[Tissue, ...]]] = {
    # comparison name: (reference file stem, our tissues that should match it)
    # comparison names start with "silver_" so that they never pool with phantom rows
    "silver_skeletal_muscle": ("skeletal_muscle", (Tissue.SKELETAL_MUSCLE,)),
    "silver_sat": ("subcutaneous_fat", (Tissue.SAT,)),
    "silver_torso_fat_vs_vat_imat": ("torso_fat", (Tissue.VAT, Tissue.IMAT)),
}

REFERENCE_IN_HU: dict[str, tuple[str, str]] = {
    # comparison name: (plain comparison it restricts, HU range of AnalysisConfig)
    "silver_skeletal_muscle_in_hu": ("silver_skeletal_muscle", "muscle_hu"),
    "silver_sat_in_hu": ("silver_sat", "fat_hu"),
}


@dataclass(frozen=True)
class SliceResult:
    """Agreement of one slice, per comparison (tissue key or reference name)."""

    case: str
    slice_index: int
    dice: dict[str, float | None]
    area_gt_cm2: dict[str, float]
    area_pred_cm2: dict[str, float]
    csa_error_pct: dict[str, float | None] = field(default_factory=dict)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice coefficient of two boolean masks; None when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return None
    return 2.0 * int((prediction & truth).sum()) / total


def csa_error_pct(truth_cm2: float, predicted_cm2: float) -> float | None:
    """The paper's CSA error ``|GT - pred| / GT x 100``; None when GT is zero."""
    if truth_cm2 <= 0:
        return None
    return abs(truth_cm2 - predicted_cm2) / truth_cm2 * 100.0


def compare_masks(
    case: str, slice_index: int, predicted: dict[str, np.ndarray], truth: dict[str, np.ndarray], pixel_area_mm2: float
) -> SliceResult:
    """Dice, areas and CSA error for each named pair of masks.

    Raises
    ------
    ValueError
        If the two dictionaries name different comparisons.
    """
    if predicted.keys() != truth.keys():
        raise ValueError(f"comparisons differ: {sorted(predicted)} vs {sorted(truth)}")
    scale = pixel_area_mm2 / 100.0
    gt_area = {name: float(truth[name].sum()) * scale for name in truth}
    pred_area = {name: float(predicted[name].sum()) * scale for name in predicted}
    return SliceResult(
        case=case,
        slice_index=slice_index,
        dice={name: dice(predicted[name], truth[name]) for name in truth},
        area_gt_cm2=gt_area,
        area_pred_cm2=pred_area,
        csa_error_pct={name: csa_error_pct(gt_area[name], pred_area[name]) for name in truth},
    )


def evaluate_labels(case: str, slice_index: int, predicted: np.ndarray, truth: np.ndarray, pixel_area_mm2: float,
                    prefix: str = "") -> SliceResult:
    """Compare two label maps of :class:`Tissue` values, tissue by tissue (rows ``prefix + key``)."""
    return compare_masks(
        case,
        slice_index,
        {prefix + t.key: predicted == t for t in Tissue},
        {prefix + t.key: truth == t for t in Tissue},
        pixel_area_mm2,
    )


def evaluate_reference_folder(
    folder: str | Path,
    slices: Iterable[int] | None = None,
    config: AnalysisConfig | None = None,
    segmenter: Segmenter = segment_slice,
) -> list[SliceResult]:
    """Segment each chosen slice of a folder's ``ct.nii.gz`` and compare with its silver masks.

    Raises
    ------
    FileNotFoundError
        If ``ct.nii.gz`` or a reference mask is missing.
    """
    config = config or AnalysisConfig()
    folder = Path(folder)
    volume = read_nifti(folder / "ct.nii.gz")
    references = {name: read_label_nifti(folder / f"{stem}.nii.gz") > 0 for name, (stem, _) in REFERENCE_MASKS.items()}
    pixel_mm = (volume.spacing_mm[1], volume.spacing_mm[2])
    results = []
    for k in slices if slices is not None else range(volume.shape[0]):
        labels = segmenter(volume.hu[k], pixel_mm, config)
        predicted = {name: np.isin(labels, [int(t) for t in tissues]) for name, (_, tissues) in REFERENCE_MASKS.items()}
        truth = {name: references[name][k] for name in REFERENCE_MASKS}
        for name, (plain, range_name) in REFERENCE_IN_HU.items():
            hu_range = getattr(config, range_name)
            predicted[name] = predicted[plain]
            truth[name] = truth[plain] & (volume.hu[k] >= hu_range.min) & (volume.hu[k] <= hu_range.max)
        results.append(compare_masks(folder.name, int(k), predicted, truth, volume.pixel_area_mm2))
    return results


def evaluate_dicom_folder(
    folder: str | Path,
    slices: Iterable[int] | None = None,
    config: AnalysisConfig | None = None,
    segmenter: Segmenter = segment_slice,
) -> list[SliceResult]:
    """Segment each labelled slice (of ``slices``) of a DICOM CT + tissue SEG case and compare.

    Raises
    ------
    ValueError
        See :func:`l3node.train.site_dicom.read_dicom_case` and
        :func:`~l3node.train.site_dicom.tissue_labels`; also when no chosen slice is labelled.
    """
    config = config or AnalysisConfig()
    volume, seg = site_dicom.read_dicom_case(folder)
    reference = site_dicom.tissue_labels(seg, volume)
    labelled = [int(k) for k in np.nonzero(reference.any(axis=(1, 2)))[0] if slices is None or k in slices]
    if not labelled:
        raise ValueError(f"{folder}: no chosen slice carries a tissue label in the SEG")
    pixel_mm = (volume.spacing_mm[1], volume.spacing_mm[2])
    results = []
    for k in labelled:
        labels = segmenter(volume.hu[k], pixel_mm, config)
        results.append(evaluate_labels(Path(folder).name, k, labels, reference[k], volume.pixel_area_mm2, "site_"))
    return results


def evaluate_phantom(
    variant: str,
    seed: int,
    config: AnalysisConfig | None = None,
    segmenter: Segmenter = segment_slice,
    **options,
) -> SliceResult:
    """Segment a phantom's L3 slice and compare with its exact tissue labels.

    ``options`` go to :func:`l3node.phantom.make_phantom`; the scan range
    defaults to ``abdomen_pelvis`` so that L3 is in the field of view.

    Raises
    ------
    ValueError
        If L3 lies outside the phantom's scan.
    """
    from l3node.phantom import make_phantom  # generated data; imported only when asked for

    config = config or AnalysisConfig()
    options.setdefault("scan_range", "abdomen_pelvis")
    phantom = make_phantom(variant, seed=seed, **options)
    if phantom.ground_truth.get("l3_slice_index") is None:
        raise ValueError(f"phantom {variant}:{seed}: L3 is outside the scan")
    k = int(phantom.ground_truth["l3_slice_index"])
    volume = phantom.volume
    labels = segmenter(volume.hu[k], (volume.spacing_mm[1], volume.spacing_mm[2]), config)
    return evaluate_labels(f"phantom:{variant}:{seed}", k, labels, np.asarray(phantom.tissue_labels[k]), volume.pixel_area_mm2)


def evaluate_cases(cases: Iterable[str], config: AnalysisConfig | None = None) -> list[SliceResult]:
    """Evaluate case specifications (see module docstring) with the configured segmentation
    (``config.segmentation``: the rules, or the tissue network).

    Raises
    ------
    ValueError
        If a specification cannot be parsed.
    FileNotFoundError
        If a reference folder lacks a file.
    """
    config = config or AnalysisConfig()
    segmenter = segment_slice
    if config.segmentation == "network":
        from l3node.analysis.neural import segment_slice_network  # torch is imported only here

        segmenter = segment_slice_network
    results: list[SliceResult] = []
    for n, spec in enumerate(cases, 1):
        log.info("seg_case_started", case=spec, n=n)
        if spec.startswith("phantom:"):
            parts = spec.split(":")
            if len(parts) != 3 or not parts[2].isdigit():
                raise ValueError(f"phantom case must be phantom:<variant>:<seed>, got {spec!r}")
            results.append(evaluate_phantom(parts[1], int(parts[2]), config, segmenter=segmenter))
            continue
        folder, _, span = spec.partition("@")
        slices = None
        if span:
            first, _, last = span.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"slice range must be <k0>-<k1>, got {span!r}")
            slices = range(int(first), int(last or first) + 1)
        if site_dicom.is_dicom_case(Path(folder)):
            results.extend(evaluate_dicom_folder(folder, slices, config, segmenter))
        else:
            results.extend(evaluate_reference_folder(folder, slices, config, segmenter))
    return results


def summarize(results: list[SliceResult]) -> dict[str, dict[str, float | int | None]]:
    """Mean, SD and worst value of Dice and CSA error per comparison."""
    names = sorted({name for r in results for name in r.dice})
    summary = {}
    for name in names:
        dices = np.array([r.dice[name] for r in results if r.dice.get(name) is not None], float)
        errors = np.array([r.csa_error_pct[name] for r in results if r.csa_error_pct.get(name) is not None], float)
        summary[name] = {
            "n": len(dices),
            "dice_mean": float(dices.mean()) if len(dices) else None,
            "dice_min": float(dices.min()) if len(dices) else None,
            "csa_error_pct_mean": float(errors.mean()) if len(errors) else None,
            "csa_error_pct_sd": float(errors.std(ddof=1)) if len(errors) > 1 else None,
            "csa_error_pct_max": float(errors.max()) if len(errors) else None,
        }
    return summary


def write_report(results: list[SliceResult], out_dir: str | Path) -> list[Path]:
    """Write ``segmentation_eval.csv``, ``segmentation_eval.md`` and a Bland-Altman PNG per comparison.

    Raises
    ------
    OSError
        If the folder cannot be written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted({name for r in results for name in r.dice})
    csv_path = out / "segmentation_eval.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "slice", "comparison", "dice", "area_gt_cm2", "area_pred_cm2", "csa_error_pct"])
        for r in results:
            for name in names:
                writer.writerow([r.case, r.slice_index, name, _fmt(r.dice.get(name)), _fmt(r.area_gt_cm2.get(name)),
                                 _fmt(r.area_pred_cm2.get(name)), _fmt(r.csa_error_pct.get(name))])
    summary = summarize(results)
    lines = [
        "# Segmentation evaluation",
        "",
        f"{len(results)} slice(s). CSA error % = |GT - pred| / GT x 100.",
        "",
        "| comparison | n | Dice mean | Dice min | CSA error % mean | SD | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n']} | {_fmt(s['dice_mean'])} | {_fmt(s['dice_min'])} | "
                     f"{_fmt(s['csa_error_pct_mean'], 2)} | {_fmt(s['csa_error_pct_sd'], 2)} | {_fmt(s['csa_error_pct_max'], 2)} |")
    lines += ["", "| case | slice | " + " | ".join(f"{n} Dice | {n} CSA err %" for n in names) + " |",
              "|---|---|" + "---|---|" * len(names)]
    for r in results:
        cells = " | ".join(f"{_fmt(r.dice.get(n))} | {_fmt(r.csa_error_pct.get(n), 2)}" for n in names)
        lines.append(f"| {r.case} | {r.slice_index} | {cells} |")
    md_path = out / "segmentation_eval.md"
    md_path.write_text("\n".join(lines) + "\n")
    written = [csv_path, md_path]
    for name in names:
        written.append(_bland_altman(results, name, out / f"bland_altman_{name}.png"))
    return written


def evaluate_and_report(cases: Iterable[str], out_dir: str | Path, config: AnalysisConfig | None = None) -> dict:
    """What ``l3node evaluate seg <cases> --out <dir>`` does: evaluate, write the report, return the summary.

    Raises
    ------
    ValueError
        If a case specification cannot be parsed or a phantom has no L3.
    FileNotFoundError
        If a reference folder lacks a file.
    """
    results = evaluate_cases(list(cases), config)
    paths = write_report(results, out_dir)
    summary = summarize(results)
    log.info("segmentation_evaluated", slices=len(results), report=str(paths[1]),
             **{f"{name}_dice_mean": round(s["dice_mean"], 4) for name, s in summary.items() if s["dice_mean"] is not None})
    return summary


def phantom_case_specs(per_variant: int, first_seed: int = 0) -> list[str]:
    """``phantom:<variant>:<seed>`` for seeds ``first_seed`` .. ``first_seed + per_variant - 1`` of every variant."""
    from l3node.phantom import VARIANTS

    return [f"phantom:{variant}:{seed}" for variant in VARIANTS for seed in range(first_seed, first_seed + per_variant)]


def main_evaluate_seg(cases: Iterable[str | Path], out: str | Path, phantoms_per_variant: int = 0,
                      first_seed: int = 0, config: AnalysisConfig | None = None) -> int:
    """Entry point of ``l3node evaluate seg CASES... [--phantoms-per-variant N] [--first-seed S] [--out DIR]
    [--config FILE]``.

    Cases are folder specifications or ``phantom:<variant>:<seed>`` (see module
    docstring). ``phantoms_per_variant`` N > 0 adds seeds S..S+N-1 of every phantom
    variant (held-out sets: a ``first_seed`` never used in development); with no cases
    at all, seed S of every variant is used; ``config`` gives the analysis settings
    (defaults: :class:`~l3node.config.AnalysisConfig`). Returns 0, or
    2 after printing why a case could not be evaluated.

    Raises
    ------
    OSError
        If the report cannot be written.
    """
    specs = [str(case) for case in cases]
    specs += phantom_case_specs(phantoms_per_variant if phantoms_per_variant > 0 else (0 if specs else 1), first_seed)
    try:
        summary = evaluate_and_report(specs, out, config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, s in summary.items():
        print(f"{name}: n={s['n']} Dice {_fmt(s['dice_mean'])} CSA error {_fmt(s['csa_error_pct_mean'], 2)} %")
    print(f"report: {Path(out) / 'segmentation_eval.md'}")
    return 0


def _bland_altman(results: list[SliceResult], name: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt = np.array([r.area_gt_cm2[name] for r in results if name in r.area_gt_cm2])
    pred = np.array([r.area_pred_cm2[name] for r in results if name in r.area_pred_cm2])
    mean = (gt + pred) / 2
    diff = pred - gt
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(mean, diff, s=14)
    if len(diff):
        bias = float(diff.mean())
        spread = 1.96 * float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.axhline(bias, color="k", label=f"bias {bias:+.2f} cm²")
        for limit, side in ((bias + spread, "upper"), (bias - spread, "lower")):
            ax.axhline(limit, color="k", linestyle="--", label=f"{side} 95 % limit {limit:+.2f} cm²")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("mean of reference and prediction (cm²)")
    ax.set_ylabel("prediction − reference (cm²)")
    ax.set_title(f"Bland–Altman: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"
