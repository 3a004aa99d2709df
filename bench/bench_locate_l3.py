"""Benchmark: locate_l3 on a 512x512x300 study (target <= 1 s on the 2-core CPU).

Run:  python bench/bench_locate_l3.py [--repeat 5] [--variant normal] [--seed 0]

A phantom with a 512 matrix and 300 slices (1.5 mm, abdomen-pelvis plus some chest) is
generated once (not timed); locate_l3 is then timed ``--repeat`` times after one warm-up.
The real ts_example_ct (122x101x112) is timed too when ../shared/data is present.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def _time(fn, repeat: int) -> list[float]:
    fn()  # warm-up: imports, caches
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variant", default="normal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from l3node.analysis.locate_l3 import locate_l3
    from l3node.analysis.volume import Volume, read_nifti
    from l3node.logs import configure
    from l3node.phantom import make_phantom

    configure(json=False, level="WARNING")
    p = make_phantom(args.variant, args.seed, matrix=512, slice_thickness_mm=1.5, scan_range="abdomen_pelvis")
    v = p.volume
    # Exactly 300 slices: crop or pad (air) at the top so the benchmark size is fixed.
    hu = v.hu[:300] if v.hu.shape[0] >= 300 else np.concatenate(
        [v.hu, np.full((300 - v.hu.shape[0],) + v.hu.shape[1:], -1000, np.float32)])
    volume = Volume(np.ascontiguousarray(hu), v.spacing_mm, v.origin_mm)
    times = _time(lambda: locate_l3(volume), args.repeat)
    result = locate_l3(volume)
    truth = p.ground_truth["l3_inferior_endplate_z_mm"]
    err = None if truth is None or result.z_mm is None else abs(truth - result.z_mm)
    print(f"phantom {args.variant} seed {args.seed}: shape {volume.shape}, spacing {volume.spacing_mm}")
    print(f"  locate_l3: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s "
          f"({args.repeat} runs); status {result.status.value}, error {err if err is None else round(err, 1)} mm")

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "ts_example_ct" / "ct.nii.gz"
    if real.exists():
        ct = read_nifti(real)
        times = _time(lambda: locate_l3(ct), args.repeat)
        print(f"real ts_example_ct {ct.shape}: median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
