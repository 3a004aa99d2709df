"""Tissue measurements on the L3 slice (placeholder types; algorithm owned by issue 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

from l3node.analysis.tissues import Tissue


@dataclass(frozen=True)
class TissueMeasurement:
    tissue: Tissue
    area_cm2: float
    mean_hu: float | None  # None when the area is zero
    sd_hu: float | None
    pixel_count: int


@dataclass(frozen=True)
class PatientFacts:
    """What DICOM tells about the patient, each None when absent."""

    sex: str | None = None  # "M" / "F"
    height_m: float | None = None  # PatientSize
    weight_kg: float | None = None  # PatientWeight

    @property
    def bmi(self) -> float | None:
        if self.height_m and self.weight_kg:
            return self.weight_kg / self.height_m**2
        return None


@dataclass(frozen=True)
class Measurements:
    tissues: dict[Tissue, TissueMeasurement]
    smi_cm2_m2: float | None  # skeletal muscle index; None without height
    flags: tuple[str, ...] = ()  # e.g. "low_muscle_mass", "low_muscle_attenuation"
    notes: tuple[str, ...] = field(default=())  # e.g. "height missing: no SMI"
    cutoff_set: str | None = None
