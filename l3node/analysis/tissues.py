"""The tissues measured at L3 and their label values.

Label values are shared by the segmentation, the measurements, the SEG writer
(segment numbers) and the phantom's ground truth.
"""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Tissue label values in 2D/3D label maps (0 = background)."""

    SKELETAL_MUSCLE = 1
    IMAT = 2
    VAT = 3
    SAT = 4

    @property
    def key(self) -> str:
        """The name used in results.json and ground_truth.json."""
        return {1: "skeletal_muscle", 2: "imat", 3: "vat", 4: "sat"}[int(self)]

    @property
    def label(self) -> str:
        return {
            1: "Skeletal muscle",
            2: "Intermuscular adipose tissue",
            3: "Visceral adipose tissue",
            4: "Subcutaneous adipose tissue",
        }[int(self)]


TISSUE_KEYS: tuple[str, ...] = tuple(t.key for t in Tissue)
