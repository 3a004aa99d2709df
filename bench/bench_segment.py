"""Time :func:`l3node.analysis.segment.segment_slice` on 512 x 512 slices.

Target (issue 5): <= 0.5 s per slice on the 2-core CPU. Slices timed:

* a real 512 x 512 CT slice from ``shared/data/ts_example_ct_dicom`` (if present);
* the L3 slices of two 512-matrix phantoms (if :mod:`l3node.phantom` is importable), one with
  both arms lying against the torso.

Usage: ``python bench/bench_segment.py [--repeat N]``. Prints one line per slice
with the median and worst time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l3node.analysis.segment import segment_slice  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _real_slice() -> tuple[str, np.ndarray, tuple[float, float]] | None:
    folder = DATA / "ts_example_ct_dicom"
    if not folder.is_dir():
        return None
    from l3node.analysis.volume import read_dicom_folder

    volume = read_dicom_folder(folder)
    k = volume.shape[0] // 2
    return f"real DICOM slice k={k}", volume.hu[k], (volume.spacing_mm[1], volume.spacing_mm[2])


def _phantom_slice(variant: str = "normal", seed: int = 0, note: str = "") -> tuple[str, np.ndarray, tuple[float, float]] | None:
    try:
        from l3node.phantom import make_phantom
    except ImportError:
        return None
    phantom = make_phantom(variant, seed=seed, matrix=512, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    k = phantom.ground_truth["l3_slice_index"]
    volume = phantom.volume
    return f"phantom {variant}:{seed} L3 slice k={k}{note}", volume.hu[k], (volume.spacing_mm[1], volume.spacing_mm[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # four_lumbar:2003 has both arms lying against the torso: the slowest body outline.
    cases = [c for c in (_real_slice(), _phantom_slice(), _phantom_slice("four_lumbar", 2003, " (arms against the body)"))
             if c is not None]
    if not cases:
        print("no 512 x 512 slice available (no shared data, no phantom)")
        return
    for name, hu, pixel_mm in cases:
        segment_slice(hu, pixel_mm)  # warm-up (imports, caches)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            segment_slice(hu, pixel_mm)
            times.append(time.perf_counter() - start)
        print(f"{name}: {hu.shape[0]}x{hu.shape[1]} at {pixel_mm[0]:.3f} mm  "
              f"median {np.median(times):.3f} s  worst {max(times):.3f} s  (target <= 0.5 s)")


if __name__ == "__main__":
    main()
