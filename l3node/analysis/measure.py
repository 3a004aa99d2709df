"""Tissue measurements on the L3 slice: areas, HU, SMI, ratios and cut-off flags.

Areas are pixel counts times the pixel area; mean and SD HU are over the pixels
of each tissue. SMI is skeletal muscle area (IMAT excluded) over height squared.
Flags follow the cut-off set chosen in ``config.analysis.cutoff_set`` (see
:mod:`l3node.analysis.cutoffs`); every input that is missing, or was corrected,
is said in ``notes`` so the report never hides why a flag is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom

from l3node.analysis.cutoffs import CutoffNotApplicable, attenuation_cutoff, smi_cutoff
from l3node.analysis.tissues import Tissue
from l3node.config import AnalysisConfig

LOW_MUSCLE_MASS = "low_muscle_mass"
LOW_MUSCLE_ATTENUATION = "low_muscle_attenuation"

HEIGHT_RANGE_M = (0.5, 2.6)
WEIGHT_RANGE_KG = (2.0, 400.0)


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

    sex: str | None = None  # "M" / "F" (or "O")
    height_m: float | None = None  # PatientSize
    weight_kg: float | None = None  # PatientWeight
    notes: tuple[str, ...] = ()  # corrections made while reading, e.g. "PatientSize 172 read as cm"

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
    quality_flags: tuple[str, ...] = ()  # the slice's own problems (l3node.analysis.slice_quality)
    notes: tuple[str, ...] = field(default=())  # e.g. "height missing: no SMI"
    cutoff_set: str | None = None
    sma_vat_ratio: float | None = None  # SMA / VAT; None when VAT is zero
    vat_sat_ratio: float | None = None  # VAT / SAT; None when SAT is zero
    bmi_kg_m2: float | None = None
    muscle_mass_cutoff: str | None = None  # the rule applied, e.g. "Martin 2013, male, BMI >= 25: SMI < 53 cm²/m²"
    muscle_attenuation_cutoff: str | None = None


def measure(
    hu: np.ndarray,
    labels: np.ndarray,
    pixel_area_mm2: float,
    patient: PatientFacts | None = None,
    config: AnalysisConfig | None = None,
) -> Measurements:
    """Measure each tissue of a labelled slice and apply the configured cut-offs.

    Parameters
    ----------
    hu:
        The HU plane the labels were made on, ``(row, col)``.
    labels:
        :class:`~l3node.analysis.tissues.Tissue` values, same shape.
    pixel_area_mm2:
        Area of one pixel.
    patient:
        Sex, height, weight; missing values are said in the notes.
    config:
        Gives ``cutoff_set`` (and ``imat_edge``, said in the notes when not the default);
        defaults to :class:`~l3node.config.AnalysisConfig`.

    Returns
    -------
    Measurements

    Raises
    ------
    ValueError
        If the shapes differ or the pixel area is not positive.
    """
    config = config or AnalysisConfig()
    patient = patient or PatientFacts()
    hu = np.asarray(hu, dtype=np.float64)
    labels = np.asarray(labels)
    if hu.shape != labels.shape:
        raise ValueError(f"HU plane {hu.shape} and labels {labels.shape} differ in shape")
    if not pixel_area_mm2 > 0:
        raise ValueError(f"pixel area must be positive, got {pixel_area_mm2}")

    tissues = {tissue: _measure_tissue(hu, labels == tissue, tissue, pixel_area_mm2) for tissue in Tissue}
    notes = list(patient.notes)
    flags: list[str] = []
    sma = tissues[Tissue.SKELETAL_MUSCLE].area_cm2
    vat = tissues[Tissue.VAT].area_cm2
    sat = tissues[Tissue.SAT].area_cm2
    bmi = patient.bmi

    smi = None
    if patient.height_m is None:
        notes.append("PatientSize missing: no SMI, muscle-mass cut-off not applied")
    else:
        smi = sma / patient.height_m**2
    if patient.weight_kg is None:
        notes.append("PatientWeight missing: BMI unknown")

    mass_rule = None
    if smi is not None:
        try:
            cutoff = smi_cutoff(config.cutoff_set, patient.sex, bmi)
        except CutoffNotApplicable as exc:
            notes.append(f"{exc}: muscle-mass cut-off not applied")
        else:
            mass_rule = cutoff.rule
            if smi < cutoff.value:
                flags.append(LOW_MUSCLE_MASS)
    elif patient.sex is None:
        notes.append("PatientSex missing")

    attenuation_rule = None
    muscle_hu = tissues[Tissue.SKELETAL_MUSCLE].mean_hu
    try:
        cutoff = attenuation_cutoff(config.cutoff_set, bmi)
    except CutoffNotApplicable as exc:
        notes.append(f"{exc}: muscle-attenuation cut-off not applied")
    else:
        if muscle_hu is None:
            notes.append("no skeletal muscle segmented: muscle-attenuation cut-off not applied")
        else:
            attenuation_rule = cutoff.rule
            if muscle_hu < cutoff.value:
                flags.append(LOW_MUSCLE_ATTENUATION)

    if config.imat_edge == "outline" and config.segmentation == "classical":
        notes.append("IMAT includes the muscle's edge pixels in the fat range inside its outline (imat_edge: outline)")

    return Measurements(
        tissues=tissues,
        smi_cm2_m2=smi,
        flags=tuple(flags),
        notes=tuple(notes),
        cutoff_set=config.cutoff_set,
        sma_vat_ratio=sma / vat if vat > 0 else None,
        vat_sat_ratio=vat / sat if sat > 0 else None,
        bmi_kg_m2=bmi,
        muscle_mass_cutoff=mass_rule,
        muscle_attenuation_cutoff=attenuation_rule,
    )


def _measure_tissue(hu: np.ndarray, mask: np.ndarray, tissue: Tissue, pixel_area_mm2: float) -> TissueMeasurement:
    count = int(mask.sum())
    values = hu[mask]
    return TissueMeasurement(
        tissue=tissue,
        area_cm2=count * pixel_area_mm2 / 100.0,
        mean_hu=float(values.mean()) if count else None,
        sd_hu=float(values.std(ddof=1)) if count > 1 else (0.0 if count == 1 else None),
        pixel_count=count,
    )


def patient_facts_from_dataset(ds: pydicom.Dataset) -> PatientFacts:
    """Sex, height (m) and weight (kg) from a DICOM dataset, checked for sanity.

    PatientSize is metres in DICOM (PS3.3 C.7.2.2) but is often entered in
    centimetres: a value above 3 is read as cm and converted, with a note. Values
    outside plausible ranges are dropped, with a note.

    Raises
    ------
    ValueError
        Not raised: missing or malformed attributes become ``None`` with a note.
    """
    notes: list[str] = []
    sex = str(getattr(ds, "PatientSex", "") or "").strip().upper() or None
    if sex is not None and sex not in {"M", "F", "O"}:
        notes.append(f"PatientSex {sex!r} not M/F/O: ignored")
        sex = None

    height = _number(ds, "PatientSize", notes)
    if height is not None and height > 3.0:
        notes.append(f"PatientSize {height:g} read as cm ({height / 100:g} m)")
        height = height / 100.0
    if height is not None and not HEIGHT_RANGE_M[0] <= height <= HEIGHT_RANGE_M[1]:
        notes.append(f"PatientSize {height:g} m implausible: ignored")
        height = None

    weight = _number(ds, "PatientWeight", notes)
    if weight is not None and not WEIGHT_RANGE_KG[0] <= weight <= WEIGHT_RANGE_KG[1]:
        notes.append(f"PatientWeight {weight:g} kg implausible: ignored")
        weight = None
    return PatientFacts(sex=sex, height_m=height, weight_kg=weight, notes=tuple(notes))


def _number(ds: pydicom.Dataset, keyword: str, notes: list[str]) -> float | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        notes.append(f"{keyword} {value!r} is not a number: ignored")
        return None
    if not np.isfinite(number) or number <= 0:
        notes.append(f"{keyword} {value!r} is not positive: ignored")
        return None
    return number
