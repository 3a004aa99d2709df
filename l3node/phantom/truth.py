"""The ground truth of a phantom: L3 level, variant facts and tissue areas on the L3 slice."""

from __future__ import annotations

from typing import Any

import numpy as np

from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume
from l3node.phantom.anatomy import Spine
from l3node.phantom.ribs import RibCage
from l3node.phantom.variants import NORMAL_RIB_MIN_MM, VARIANT_CLASS


def l3_slice_index(volume: Volume, z_mm: float | None) -> int | None:
    """Nearest slice to ``z_mm``; None when ``z_mm`` is None or outside the volume."""
    if z_mm is None or not volume.contains_z(z_mm):
        return None
    return volume.slice_index_at(z_mm)


def measure_slice(volume: Volume, tissues: np.ndarray, k: int) -> tuple[dict[str, float], dict[str, float | None]]:
    """Areas (cm^2 = pixels x pixel area / 100) and mean HU of each tissue on slice ``k``."""
    areas: dict[str, float] = {}
    means: dict[str, float | None] = {}
    for tissue in Tissue:
        mask = tissues[k] == int(tissue)
        count = int(mask.sum())
        areas[tissue.key] = round(count * volume.pixel_area_mm2 / 100.0, 4)
        means[tissue.key] = round(float(volume.hu[k][mask].mean()), 2) if count else None
    return areas, means


def ground_truth(*, volume: Volume, tissues: np.ndarray, spine: Spine, ribs: RibCage, variant: str,
                 components: tuple[str, ...], patient: dict, acquisition: dict, seed: int) -> dict[str, Any]:
    """JSON-ready ground truth (see :func:`l3node.phantom.make_phantom`)."""
    l3 = spine.by_name("L3")
    z_l3 = round(l3.z_inferior_mm, 3)
    k = l3_slice_index(volume, z_l3)
    in_scan = k is not None
    areas, means = measure_slice(volume, tissues, k) if in_scan else (None, None)
    lumbar = [v for v in spine.vertebrae if v.name.startswith("L")]
    mobile = [v for v in spine.vertebrae if v.spec.kind in ("lumbar", "transitional")
              and v.spec.rib_length_mm == 0 and v.spec.disc_below_mm >= 4.0]
    rib_lengths = {v.name: round(v.spec.rib_length_mm, 1) for v in spine.vertebrae if v.spec.rib_length_mm > 0}
    z_top, z_bottom = float(volume.z_mm[-1]), float(volume.z_mm[0])
    vertebrae = {
        v.name: {
            "label": v.label,
            "z_inferior_mm": round(v.z_inferior_mm, 3),
            "z_superior_mm": round(v.z_superior_mm, 3),
            "kind": v.spec.kind,
            "body_centre_xy_mm": [0.0, round(v.y_centre_mm, 3)],
            "rib_length_mm": round(v.spec.rib_length_mm, 1),
            "in_scan": bool(v.z_superior_mm >= z_bottom and v.z_inferior_mm <= z_top),
        }
        for v in spine.vertebrae
    }
    return {
        "l3_inferior_endplate_z_mm": z_l3 if in_scan else None,
        "l3_slice_index": k,
        "l3_definition": "inferior endplate of the third vertebra below T12 (true segment count from the top)",
        "variant": variant,
        "variant_class": VARIANT_CLASS[variant].value,
        "components": list(components),
        "lumbar_count": len(lumbar),
        "mobile_lumbar_type_count": len(mobile),
        "rib_pairs": len(rib_lengths),
        "normal_rib_pairs": sum(1 for v in rib_lengths.values() if v >= NORMAL_RIB_MIN_MM),
        "rib_lengths_mm": rib_lengths,
        "twelfth_rib_length_mm": round(spine.by_name("T12").spec.rib_length_mm, 1),
        "vertebrae": vertebrae,
        "areas_cm2": areas,
        "mean_hu": means,
        "patient": dict(patient),
        "acquisition": dict(acquisition),
        "seed": int(seed),
    }
