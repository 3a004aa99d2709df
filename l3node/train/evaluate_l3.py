"""Evaluate L3 location with the paper's metrics (L3SEG-net, Kim et al.).

* distance error = |slice(GT) - slice(pred)| x slice spacing (mm), as in the paper; the
  continuous |z(GT) - z(pred)| is reported beside it;
* technical success = error < 10 mm; for a case whose L3 is outside the scan, success is
  answering ``not_in_field_of_view`` (and any slice given there is a failure);
* mean +- SD and maximum error, success rate and variant-class accuracy (over cases whose
  L3 is in the scan), overall and per variant subgroup; a Markdown table, a CSV of every
  case and a box plot PNG (:func:`main_evaluate_l3` is the ``l3node evaluate l3`` command).

Cases come from phantoms (:func:`phantom_cases`, generated lazily so that hundreds fit in
memory) or from labelled real CT (:func:`labelled_nifti_case`: NIfTI + vertebra label map).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from l3node.analysis.locate_l3 import L3Location, L3Status, inferior_endplate_z_from_labels, locate_l3
from l3node.analysis.volume import Volume, read_label_nifti, read_nifti
from l3node.config import AnalysisConfig
from l3node.logs import get_logger
from l3node.train import site_dicom

log = get_logger(__name__)

SUCCESS_MM = 10.0


@dataclass(frozen=True)
class L3Case:
    """One case to evaluate; ``load`` returns the volume (lazily, to bound memory)."""

    name: str
    load: Callable[[], Volume]
    truth_z_mm: float | None  # None: L3's inferior endplate is outside the scan
    variant_class: str | None = None  # paper's class ("normal", ...) when known
    source: str = ""
    class_in_view: bool | None = None  # T11-T12 and the top of the sacrum inside the scan


@dataclass(frozen=True)
class CaseResult:
    name: str
    source: str
    variant_class: str | None
    truth_z_mm: float | None
    predicted_z_mm: float | None
    error_mm: float | None  # slice distance x spacing (paper); None when one side has no slice
    z_error_mm: float | None  # continuous |z difference|
    success: bool
    status: str
    predicted_variant: str
    variant_correct: bool | None
    confidence: float
    elapsed_s: float
    class_in_view: bool | None = None


@dataclass(frozen=True)
class GroupSummary:
    group: str
    n: int
    n_with_error: int
    mean_mm: float | None
    sd_mm: float | None
    max_mm: float | None
    success_pct: float
    variant_accuracy_pct: float | None
    variant_accuracy_in_view_pct: float | None = None
    n_class_in_view: int = 0


@dataclass(frozen=True)
class L3Evaluation:
    """Per-case results and per-group summaries ("all" first, then variant classes)."""

    cases: tuple[CaseResult, ...]
    groups: tuple[GroupSummary, ...] = field(default=())

    def to_markdown(self) -> str:
        lines = [
            "| group | n | error mean ± SD (mm) | max (mm) | success < 10 mm | variant class correct "
            "(L3 in scan) | class correct (T11-sacrum in scan, n) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for g in self.groups:
            err = "–" if g.mean_mm is None else f"{g.mean_mm:.1f} ± {g.sd_mm:.1f}"
            mx = "–" if g.max_mm is None else f"{g.max_mm:.1f}"
            acc = "–" if g.variant_accuracy_pct is None else f"{g.variant_accuracy_pct:.1f} %"
            seen = ("–" if g.variant_accuracy_in_view_pct is None
                    else f"{g.variant_accuracy_in_view_pct:.1f} % ({g.n_class_in_view})")
            lines.append(f"| {g.group} | {g.n} | {err} | {mx} | {g.success_pct:.1f} % | {acc} | {seen} |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        names = list(CaseResult.__dataclass_fields__)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            for case in self.cases:
                writer.writerow({n: getattr(case, n) for n in names})
        return path

    def write_box_plot(self, path: str | Path) -> Path:
        """Box plot of the distance error per variant class (cases with a slice on both sides)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        groups = [g.group for g in self.groups if g.group != "all"]
        data = [[c.error_mm for c in self.cases if c.variant_class == g and c.error_mm is not None] for g in groups]
        keep = [(g, d) for g, d in zip(groups, data) if d]
        fig, ax = plt.subplots(figsize=(1.6 * max(len(keep), 2) + 2, 4))
        if keep:
            ax.boxplot([d for _, d in keep], tick_labels=[g for g, _ in keep], showmeans=True)
        ax.axhline(SUCCESS_MM, color="red", lw=0.8, ls="--", label="10 mm (technical success)")
        ax.set_ylabel("distance error (mm)")
        ax.set_title("L3 inferior endplate: error per variant class")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def write(self, out_dir: str | Path, stem: str = "l3_evaluation") -> dict[str, Path]:
        """Markdown table, CSV of cases and box plot into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md = out / f"{stem}.md"
        md.write_text(self.to_markdown())
        return {"markdown": md, "csv": self.write_csv(out / f"{stem}.csv"),
                "box_plot": self.write_box_plot(out / f"{stem}_boxplot.png")}


def score_case(case: L3Case, volume: Volume, result: L3Location, elapsed_s: float = 0.0) -> CaseResult:
    """Compare one prediction with the truth (see module docstring)."""
    truth, pred = case.truth_z_mm, result.z_mm
    error = z_error = None
    if truth is not None and pred is not None:
        dz = volume.spacing_mm[0]
        k_truth = int(round((truth - volume.origin_mm[2]) / dz))
        k_pred = int(round((pred - volume.origin_mm[2]) / dz))
        error = abs(k_truth - k_pred) * dz
        z_error = abs(truth - pred)
        success = error < SUCCESS_MM
    elif truth is None:
        success = result.status is L3Status.NOT_IN_FIELD_OF_VIEW and pred is None
    else:
        success = False
    correct = None if case.variant_class is None else result.variant.value == case.variant_class
    return CaseResult(case.name, case.source, case.variant_class, truth, pred, error, z_error, success,
                      result.status.value, result.variant.value, correct, float(result.confidence), elapsed_s,
                      case.class_in_view)


def summarise(results: Iterable[CaseResult]) -> tuple[GroupSummary, ...]:
    """Overall and per-variant-class summaries."""
    results = list(results)
    classes = sorted({r.variant_class for r in results if r.variant_class is not None})
    groups = [("all", results)] + [(c, [r for r in results if r.variant_class == c]) for c in classes]
    out = []
    for name, rows in groups:
        errors = np.array([r.error_mm for r in rows if r.error_mm is not None], float)
        # The class is judged where L3 is in the scan: a chest-only scan cannot show the sacrum.
        judged = [r.variant_correct for r in rows if r.variant_correct is not None and r.truth_z_mm is not None]
        # A class can only be named from what the scan shows: the thoracolumbar junction
        # (ribs of T11-T12) and the lumbosacral junction (top of the sacrum).
        in_view = [r.variant_correct for r in rows if r.variant_correct is not None and r.class_in_view]
        out.append(GroupSummary(
            name, len(rows), len(errors),
            float(errors.mean()) if len(errors) else None,
            float(errors.std(ddof=1)) if len(errors) > 1 else (0.0 if len(errors) else None),
            float(errors.max()) if len(errors) else None,
            100.0 * sum(r.success for r in rows) / max(len(rows), 1),
            100.0 * sum(judged) / len(judged) if judged else None,
            100.0 * sum(in_view) / len(in_view) if in_view else None,
            len(in_view),
        ))
    return tuple(out)


def run_case(case: L3Case, config: AnalysisConfig) -> CaseResult:
    """Load one case, locate L3 (timed) and score it."""
    volume = case.load()
    start = time.perf_counter()
    result = locate_l3(volume, config)
    return score_case(case, volume, result, time.perf_counter() - start)


def _log_case(r: CaseResult, n: int, of: int | None = None) -> None:
    log.info("l3_case_scored", case=r.name, n=n, of=of, error_mm=r.error_mm, success=r.success, status=r.status,
             variant=r.predicted_variant, elapsed_s=round(r.elapsed_s, 3))


def evaluate_l3(cases: Iterable[L3Case], config: AnalysisConfig | None = None) -> L3Evaluation:
    """Run :func:`locate_l3` on every case and summarise (paper's metrics).

    ``config`` defaults to ``count_from_ribs``, the convention of the phantoms' ground truth
    (L3 = third vertebra below T12).

    Raises
    ------
    ValueError
        If ``cases`` is empty.
    """
    config = config or AnalysisConfig(variant_convention="count_from_ribs")
    results = []
    for case in cases:
        results.append(run_case(case, config))
        _log_case(results[-1], len(results))
    if not results:
        raise ValueError("no cases to evaluate")
    return L3Evaluation(tuple(results), summarise(results))


def phantom_cases(n_per_variant: int, *, first_seed: int = 0, variants: Iterable[str] | None = None,
                  **options: Any) -> Iterator[L3Case]:
    """Phantom cases, ``n_per_variant`` of each variant; acquisition varies with the seed
    unless fixed by ``options`` (e.g. ``matrix=256`` for speed)."""
    from l3node.phantom import VARIANTS

    for variant in variants or VARIANTS:
        for seed in range(first_seed, first_seed + n_per_variant):
            yield phantom_case(variant, seed, **options)


def phantom_case(variant: str, seed: int, **options: Any) -> L3Case:
    """One phantom (generated now) as an :class:`L3Case`."""
    from l3node.phantom import make_phantom

    phantom = make_phantom(variant, seed, **options)
    truth = phantom.ground_truth
    volume = phantom.volume
    return L3Case(f"{variant}-{seed}", (lambda v=volume: v), truth["l3_inferior_endplate_z_mm"],
                  truth["variant_class"], "phantom", _class_in_view(truth, volume))


SACRUM_TOP_MM = 30.0
"""The top of the sacrum with its alae: what shows a lumbosacral transition."""


def _class_in_view(truth: dict[str, Any], volume: Volume) -> bool:
    """True when T11, T12 and the top :data:`SACRUM_TOP_MM` of the sacrum are inside the scan."""
    z_lo, z_hi = float(min(volume.z_mm[0], volume.z_mm[-1])), float(max(volume.z_mm[0], volume.z_mm[-1]))
    levels = truth["vertebrae"]
    thoracic = all(z_lo <= levels[n]["z_inferior_mm"] and levels[n]["z_superior_mm"] <= z_hi for n in ("T11", "T12"))
    sacrum = levels.get("sacrum")
    return thoracic and sacrum is not None and z_lo <= sacrum["z_superior_mm"] - SACRUM_TOP_MM


def phantom_specs(*, per_variant: int = 0, per_class: int = 0, first_seed: int = 0) -> list[tuple[str, int]]:
    """(variant, seed) pairs: ``per_variant`` of every variant, or ``per_class`` of every
    variant *class* (the paper's subgroups), the class's variants taking turns.

    Each case of a class gets its own seed, so acquisitions (slice spacing, scan range,
    position, kernel, arms, ...) vary across the class as well as within each variant.
    """
    from l3node.phantom import VARIANTS
    from l3node.phantom.variants import VARIANT_CLASS

    specs = [(v, s) for v in VARIANTS for s in range(first_seed, first_seed + per_variant)]
    classes: dict[str, list[str]] = {}
    for variant in VARIANTS:
        classes.setdefault(VARIANT_CLASS[variant].value, []).append(variant)
    for members in classes.values():
        specs += [(members[j % len(members)], first_seed + j) for j in range(per_class)]
    return specs


def _evaluate_spec(spec: tuple[str, int, dict[str, Any], AnalysisConfig]) -> CaseResult:
    variant, seed, options, config = spec
    return run_case(phantom_case(variant, seed, **options), config)


def evaluate_phantoms(specs: Iterable[tuple[str, int]], config: AnalysisConfig | None = None, *,
                      workers: int = 1, **options: Any) -> list[CaseResult]:
    """Generate and score phantom cases, in ``workers`` processes (each phantom is made in the
    process that scores it, so memory stays at one volume per worker)."""
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    config = config or AnalysisConfig(variant_convention="count_from_ribs")
    jobs = [(v, s, options, config) for v, s in specs]
    results = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        scored = pool.map(_evaluate_spec, jobs, chunksize=1) if pool is not None else map(_evaluate_spec, jobs)
        for r in scored:  # in order, as they finish: progress for runs of an hour
            results.append(r)
            _log_case(r, len(results), len(jobs))
    return results


def labelled_nifti_case(ct_path: str | Path, labels_path: str | Path, l3_label: int | None, *,
                        body_labels_path: str | Path | None = None, body_value: int = 1,
                        variant_class: str | None = None, name: str | None = None) -> L3Case:
    """A real CT with a vertebra label map; ``l3_label=None`` means L3 is not in the scan.

    The truth is :func:`inferior_endplate_z_from_labels` (lower boundary of the lowest body slice).

    Raises
    ------
    ValueError
        If the label map does not match the CT or lacks ``l3_label``.
    """
    volume = read_nifti(ct_path)
    truth = None
    if l3_label is not None:
        labels = read_label_nifti(labels_path)
        body = read_label_nifti(body_labels_path) == body_value if body_labels_path else None
        truth = inferior_endplate_z_from_labels(labels, volume, l3_label, body)
    return L3Case(name or Path(ct_path).parent.name, lambda: volume, truth, variant_class, "real")


TS_L3_LABEL = 29
"""TotalSegmentator ``vertebrae`` map: 26 S1, 27 L5, 28 L4, 29 L3, ... 33 T11."""
VERSE_L3_LABEL = 22
"""VerSe / TPTBox vertebra masks: 20 L1, 21 L2, 22 L3, ...; subregion 49 = vertebral body."""


def case_from_folder(folder: str | Path) -> L3Case:
    """A labelled real CT from a folder laid out like those in ``shared/data``.

    Recognised, in order:

    * ``l3.json`` -- ``{"ct": ..., "labels": ..., "l3_label": 29 | null, "body_labels": ...,
      "body_value": 1, "variant_class": ...}`` (paths relative to the folder; ``l3_label``
      null = L3 not in the scan);
    * ``ct.nii.gz`` + ``vertebrae.nii.gz`` (TotalSegmentator, L3 = 29; absent label = not in
      view), bodies from ``vertebral_bodies_and_discs.nii.gz`` (1) when present;
    * ``ct.nii.gz`` + per-structure ``vertebra_*.nii.gz`` masks (TotalSegmentator): L3 in the
      scan exactly when ``vertebra_L3.nii.gz`` exists;
    * ``*_ct.nii.gz`` + ``*seg-vert*_msk.nii.gz`` (VerSe/TPTBox, L3 = 22), bodies from
      ``*seg-subreg*_msk.nii.gz`` (49);
    * a DICOM SEG with vertebra segments beside (or above) its DICOM CT series
      (:mod:`l3node.train.site_dicom`): L3 in the scan exactly when it has an L3 segment.

    Raises
    ------
    ValueError
        If the folder holds no CT or no vertebra labels in a known layout.
    """
    import json

    folder = Path(folder)
    spec = folder / "l3.json"
    if spec.exists():
        s = json.loads(spec.read_text())
        body = folder / s["body_labels"] if s.get("body_labels") else None
        return labelled_nifti_case(folder / s["ct"], folder / s["labels"], s.get("l3_label"),
                                   body_labels_path=body, body_value=int(s.get("body_value", 1)),
                                   variant_class=s.get("variant_class"), name=folder.name)
    ct = folder / "ct.nii.gz"
    if ct.exists() and (folder / "vertebrae.nii.gz").exists():
        labels = folder / "vertebrae.nii.gz"
        present = TS_L3_LABEL in np.unique(read_label_nifti(labels))
        bodies = folder / "vertebral_bodies_and_discs.nii.gz"
        return labelled_nifti_case(ct, labels, TS_L3_LABEL if present else None,
                                   body_labels_path=bodies if bodies.exists() else None, name=folder.name)
    masks = sorted(folder.glob("vertebra_*.nii.gz"))
    if ct.exists() and masks:
        l3 = folder / "vertebra_L3.nii.gz"
        return labelled_nifti_case(ct, l3, 1 if l3.exists() else None, name=folder.name)
    cts, verts = sorted(folder.glob("*_ct.nii.gz")), sorted(folder.glob("*seg-vert*_msk.nii.gz"))
    if cts and verts:
        subreg = sorted(folder.glob("*seg-subreg*_msk.nii.gz"))
        present = VERSE_L3_LABEL in np.unique(read_label_nifti(verts[0]))
        return labelled_nifti_case(cts[0], verts[0], VERSE_L3_LABEL if present else None,
                                   body_labels_path=subreg[0] if subreg else None, body_value=49,
                                   name=folder.name)
    if site_dicom.is_dicom_case(folder):
        volume, seg = site_dicom.read_dicom_case(folder)
        names = site_dicom.vertebra_names(seg)
        if not names:
            raise ValueError(f"{folder}: the SEG has no segment coded or labelled as a vertebra")
        truth = None
        if "L3" in names:
            l3 = site_dicom.vertebra_mask(seg, volume, "L3").astype(np.uint8)
            truth = inferior_endplate_z_from_labels(l3, volume, 1)
        return L3Case(folder.name, lambda: volume, truth, None, "real")
    raise ValueError(f"{folder}: no CT with vertebra labels in a known layout (see case_from_folder)")


def main_evaluate_l3(cases: Iterable[str | Path], out: str | Path, phantoms_per_variant: int = 0, *,
                     phantoms_per_class: int = 0, first_seed: int = 0, workers: int = 1) -> int:
    """``l3node evaluate l3 CASES... [--phantoms-per-variant N | --phantoms-per-class N]
    [--first-seed S] [--workers W] [--out DIR]``.

    Evaluates every labelled case folder (:func:`case_from_folder`) and phantoms
    (:func:`phantom_specs`: seeds from ``first_seed``, random acquisition, matrix 256, in
    ``workers`` processes). Writes ``l3_evaluation.md``, ``.csv`` and ``_boxplot.png`` into
    ``out`` and prints the Markdown table. Folders without usable labels are skipped with a
    warning.

    Returns
    -------
    int
        0 on success, 2 when there was nothing to evaluate.

    Raises
    ------
    OSError
        If ``out`` cannot be written.
    """
    real: list[L3Case] = []
    for folder in cases:
        try:
            real.append(case_from_folder(folder))
        except ValueError as exc:
            log.warning("l3_case_skipped", folder=str(folder), reason=str(exc))
    specs = phantom_specs(per_variant=phantoms_per_variant, per_class=phantoms_per_class, first_seed=first_seed)
    results = list(evaluate_l3(real).cases) if real else []
    if specs:
        results += evaluate_phantoms(specs, workers=workers, matrix=256)
    if not results:
        print("nothing to evaluate: give labelled case folders or --phantoms-per-variant/--phantoms-per-class N")
        return 2
    evaluation = L3Evaluation(tuple(results), summarise(results))
    paths = evaluation.write(out)
    print(evaluation.to_markdown())
    for case in evaluation.cases:
        if case.source == "real":
            err = "–" if case.error_mm is None else f"{case.error_mm:.1f} mm"
            print(f"{case.name}: status {case.status}, error {err}, success {case.success}")
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0
