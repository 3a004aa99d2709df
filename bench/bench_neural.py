"""Benchmark the shipped learned models: speed, fresh phantoms and the real CT in shared/data.

* speed: load time; :meth:`L3Net.predict_l3_z` on a 300 x 512 x 512 volume; :meth:`TissueNet.predict_tissues`
  on a 512 x 512 slice (median of ``--repeat``);
* fresh phantoms (seeds ``700000 + 10000 i + j``, never used in training or validation), ``--per-variant``
  of each variant, matrix 256, random slice thickness / scan range with L3 inside: L3 absolute error (mm)
  and Dice per tissue on the L3 slice;
* real CT (when ``../shared/data`` is present): ``ts_example_ct`` L3 error against the silver vertebra
  labels (L3 inferior endplate ~ 299.8 mm); ``ts_example_ct_sm`` Dice against the silver masks
  (skeletal_muscle vs muscle, subcutaneous_fat vs SAT, torso_fat vs VAT + IMAT) over its 30 slices.

Usage: ``python bench/bench_neural.py [--per-variant 2] [--repeat 3] [--device auto] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l3node.analysis.locate_l3 import inferior_endplate_z_from_labels  # noqa: E402
from l3node.analysis.neural import load_l3_net, load_tissue_net  # noqa: E402
from l3node.analysis.tissues import Tissue  # noqa: E402
from l3node.analysis.volume import Volume, read_label_nifti, read_nifti  # noqa: E402
from l3node.train.datasets import phantom_options  # noqa: E402
from l3node.train.train_seg import dice_per_tissue  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRESH_FIRST_SEED = 700000


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_speed(l3_net, seg_net, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    volume = Volume(hu=rng.normal(0.0, 300.0, (300, 512, 512)).astype(np.float32), spacing_mm=(1.0, 0.8, 0.8),
                    origin_mm=(0.0, 0.0, 0.0))
    plane = volume.hu[150]
    return {"predict_l3_z_300x512x512_s": round(_median_time(lambda: l3_net.predict_l3_z(volume), repeat), 3),
            "predict_tissues_512x512_s": round(_median_time(lambda: seg_net.predict_tissues(plane, (0.8, 0.8)),
                                                            repeat), 3)}


def bench_phantoms(l3_net, seg_net, per_variant: int) -> dict:
    from l3node.phantom import VARIANTS, make_phantom

    errors: dict[str, list[float]] = {}
    dice: dict[str, list[float]] = {t.key: [] for t in Tissue}
    for i, variant in enumerate(VARIANTS):
        for j in range(per_variant):
            seed = FRESH_FIRST_SEED + 10000 * i + j
            phantom = make_phantom(variant, seed, **phantom_options(seed))
            truth = phantom.ground_truth["l3_inferior_endplate_z_mm"]
            errors.setdefault(variant, []).append(abs(l3_net.predict_l3_z(phantom.volume).z_mm - truth))
            k = phantom.volume.slice_index_at(truth)
            labels = seg_net.predict_tissues(phantom.volume.hu[k], phantom.volume.spacing_mm[1:])
            for key, value in dice_per_tissue(labels, phantom.tissue_labels[k]).items():
                if value is not None:
                    dice[key].append(value)
    every = np.concatenate([np.asarray(v) for v in errors.values()])
    return {
        "l3_overall": {"n": int(len(every)), "mean_abs_error_mm": round(float(every.mean()), 2),
                       "max_abs_error_mm": round(float(every.max()), 2),
                       "pct_within_10mm": round(100 * float((every < 10).mean()), 1)},
        "l3_per_variant_mean_abs_error_mm": {k: round(float(np.mean(v)), 2) for k, v in errors.items()},
        "l3_per_variant_pct_within_10mm": {k: round(100 * float((np.asarray(v) < 10).mean()), 1)
                                           for k, v in errors.items()},
        "seg_dice_l3_slice_mean": {k: (round(float(np.mean(v)), 4) if v else None) for k, v in dice.items()},
    }


def bench_real(l3_net, seg_net) -> dict:
    out: dict = {}
    case = DATA / "ts_example_ct"
    if case.is_dir():
        volume = read_nifti(case / "ct.nii.gz")
        vertebrae = read_label_nifti(case / "vertebrae.nii.gz")
        bodies = read_label_nifti(case / "vertebral_bodies_and_discs.nii.gz") == 1
        truth = inferior_endplate_z_from_labels(vertebrae, volume, 29, bodies)
        answer = l3_net.predict_l3_z(volume)
        out["ts_example_ct_l3"] = {"truth_z_mm": round(truth, 1), "predicted_z_mm": round(answer.z_mm, 1),
                                   "abs_error_mm": round(abs(answer.z_mm - truth), 1),
                                   "confidence": round(answer.confidence, 3)}
    case = DATA / "ts_example_ct_sm"
    if case.is_dir():
        volume = read_nifti(case / "ct.nii.gz")
        refs = {name: read_label_nifti(case / f"{name}.nii.gz") > 0
                for name in ("skeletal_muscle", "subcutaneous_fat", "torso_fat")}
        sums = {name: [0, 0, 0] for name in refs}  # intersection, predicted, reference (pooled over slices)
        per_slice: dict[str, list[float]] = {name: [] for name in refs}
        for k in range(volume.shape[0]):
            labels = seg_net.predict_tissues(volume.hu[k], volume.spacing_mm[1:])
            predicted = {"skeletal_muscle": labels == Tissue.SKELETAL_MUSCLE, "subcutaneous_fat": labels == Tissue.SAT,
                         "torso_fat": (labels == Tissue.VAT) | (labels == Tissue.IMAT)}
            for name, ref in refs.items():
                p, g = predicted[name], ref[k]
                inter, ps, gs = int((p & g).sum()), int(p.sum()), int(g.sum())
                sums[name] = [sums[name][0] + inter, sums[name][1] + ps, sums[name][2] + gs]
                if ps + gs:
                    per_slice[name].append(2 * inter / (ps + gs))
        out["ts_example_ct_sm_dice"] = {
            name: {"pooled": round(2 * s[0] / max(s[1] + s[2], 1), 4),
                   "mean_per_slice": round(float(np.mean(per_slice[name])), 4) if per_slice[name] else None}
            for name, s in sums.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-variant", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    l3_net = load_l3_net(device=args.device)
    seg_net = load_tissue_net(device=args.device)
    result = {"device": str(l3_net.device), "load_both_s": round(time.perf_counter() - t0, 3)}
    result["speed"] = bench_speed(l3_net, seg_net, args.repeat)
    print(json.dumps(result, indent=1), flush=True)
    result["real"] = bench_real(l3_net, seg_net)
    print(json.dumps(result["real"], indent=1), flush=True)
    if args.per_variant > 0:
        result["fresh_phantoms"] = bench_phantoms(l3_net, seg_net, args.per_variant)
        print(json.dumps(result["fresh_phantoms"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
