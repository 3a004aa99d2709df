"""The ground truth of a phantom: L3 level, variant facts and tissue areas on the L3 slice."""

from __future__ import annotations

from typing import Any

import numpy as np

from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume
from l3node.phantom.anatomy import Spine
from l3node.phantom.materials import FAT_HU_RANGE, MUSCLE_HU_RANGE, Compartment
from l3node.phantom.ribs import RibCage
from l3node.phantom.variants import NORMAL_RIB_MIN_MM, VARIANT_CLASS


TISSUE_DEFINITION = {
    "rule": "tissue = anatomical compartment (exact geometry) intersected with an HU range of the FINAL image "
            "(blurred, noisy, as stored in the DICOM series); HU ranges are l3node.config.AnalysisConfig "
            "defaults, inclusive",
    "skeletal_muscle": {"compartment": "muscle", "hu": list(MUSCLE_HU_RANGE)},
    "imat": {"compartment": "muscle", "hu": list(FAT_HU_RANGE)},
    "vat": {"compartment": "visceral", "hu": list(FAT_HU_RANGE)},
    "sat": {"compartment": "subcutaneous", "hu": list(FAT_HU_RANGE)},
    "compartments": {
        "muscle": "inside the fascia of psoas, quadratus lumborum, erector spinae/multifidus and the abdominal "
                  "wall muscles (rectus, obliques, transversus), including their fatty streaks and fat pockets "
                  "(up to 5 cm^2) enclosed by muscle alone more than 10 mm from the spine; arms excluded",
        "visceral": "fat inside the abdominal wall, excluding organs, bowel (wall and content), vessels and spine, "
                    "and fat pockets enclosed by muscle (and the spine) within 10 mm of the spine (fat around "
                    "the spine: no compartment)",
        "subcutaneous": "between the skin and the abdominal wall / back muscle fascia",
    },
    "unlabelled": "compartment voxels whose HU is outside both ranges (partial volume with bone, skin, "
                  "gas or organs, or noise beyond the range) carry no tissue label; voxels whose slab holds "
                  "bone anywhere (a thick slice grazing a vertebra's processes) are in no compartment",
}
"""How ``tissue_labels`` are defined; copied into ``ground_truth["tissue_definition"]``."""

VERTEBRA_Z_DEFINITION = (
    "z_inferior_mm / z_superior_mm are the inferior / superior endplates of the vertebral BODY (sacrum: its "
    "upper endplate and tip). Posterior elements (spinous process, laminae, articular processes) carry the "
    "same label in vertebra_labels but may reach below z_inferior_mm; body_disc_labels == 1 gives body-only "
    "extents.")


def tissues_from_hu(hu: np.ndarray, compartments: np.ndarray) -> np.ndarray:
    """Tissue labels from the final HU inside each compartment (see :data:`TISSUE_DEFINITION`).

    Parameters
    ----------
    hu:
        Final HU (integer-valued float), any shape.
    compartments:
        :class:`~l3node.phantom.materials.Compartment` codes, same shape.

    Returns
    -------
    numpy.ndarray
        uint8 :class:`~l3node.analysis.tissues.Tissue` values, 0 elsewhere.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if hu.shape != compartments.shape:
        raise ValueError(f"hu {hu.shape} and compartments {compartments.shape} differ in shape")
    # hu_class: 0 neither range, 1 muscle range, 2 fat range; LUT index = 3 * compartment + hu_class.
    lut = np.zeros(3 * len(Compartment), np.uint8)
    lut[3 * Compartment.MUSCLE + 1] = Tissue.SKELETAL_MUSCLE
    lut[3 * Compartment.MUSCLE + 2] = Tissue.IMAT
    lut[3 * Compartment.VISCERAL + 2] = Tissue.VAT
    lut[3 * Compartment.SUBCUTANEOUS + 2] = Tissue.SAT
    out = np.empty(hu.shape, np.uint8)
    for k in range(hu.shape[0]):  # slice by slice keeps the temporaries small
        h = hu[k]
        index = compartments[k] * np.uint8(3)
        index += ((h >= MUSCLE_HU_RANGE[0]) & (h <= MUSCLE_HU_RANGE[1])).view(np.uint8)
        index += ((h >= FAT_HU_RANGE[0]) & (h <= FAT_HU_RANGE[1])).view(np.uint8) * np.uint8(2)
        out[k] = lut[index]
    return out


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


def compartment_areas(volume: Volume, compartments: np.ndarray, k: int) -> dict[str, float]:
    """Area (cm^2) of each compartment on slice ``k``."""
    return {c.name.lower(): round(int((compartments[k] == int(c)).sum()) * volume.pixel_area_mm2 / 100.0, 4)
            for c in Compartment if c}


def ground_truth(*, volume: Volume, tissues: np.ndarray, spine: Spine, ribs: RibCage, variant: str,
                 components: tuple[str, ...], patient: dict, acquisition: dict, seed: int,
                 compartments: np.ndarray | None = None) -> dict[str, Any]:
    """JSON-ready ground truth (see :func:`l3node.phantom.make_phantom`)."""
    l3 = spine.by_name("L3")
    z_l3 = round(l3.z_inferior_mm, 3)
    k = l3_slice_index(volume, z_l3)
    in_scan = k is not None
    areas, means = measure_slice(volume, tissues, k) if in_scan else (None, None)
    comp_areas = compartment_areas(volume, compartments, k) if in_scan and compartments is not None else None
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
        "vertebra_z_definition": VERTEBRA_Z_DEFINITION,
        "areas_cm2": areas,
        "mean_hu": means,
        "compartment_areas_cm2": comp_areas,
        "tissue_definition": TISSUE_DEFINITION,
        "patient": dict(patient),
        "acquisition": dict(acquisition),
        "seed": int(seed),
    }
