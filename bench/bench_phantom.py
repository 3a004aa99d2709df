"""Time make_phantom for a 512x512x~300 abdomen-pelvis case on one core.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_phantom.py [--repeat N] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from l3node.phantom import make_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--variant", default="normal")
    args = parser.parse_args()
    options = dict(matrix=512, slice_thickness_mm=1.5, spacing_mm=1.5, scan_range="abdomen_pelvis",
                   kernel="standard", arms="down", phase="portal")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        make_phantom(args.variant, seed=1, **options)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return
    for seed in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        phantom = make_phantom(args.variant, seed=seed, **options)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        shape = phantom.volume.shape
        print(f"seed={seed} shape={shape} voxels={shape[0] * shape[1] * shape[2] / 1e6:.1f}M "
              f"elapsed_s={elapsed:.2f} cpu_s={cpu:.2f} s_per_100_slices={100 * elapsed / shape[0]:.2f}")


if __name__ == "__main__":
    main()
