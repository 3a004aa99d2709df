"""Measurements, SMI, cut-off flags and patient facts on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from l3node.analysis.cutoffs import CutoffNotApplicable, attenuation_cutoff, get_cutoff_set, smi_cutoff
from l3node.analysis.measure import (
    LOW_MUSCLE_ATTENUATION,
    LOW_MUSCLE_MASS,
    PatientFacts,
    measure,
    patient_facts_from_dataset,
)
from l3node.analysis.tissues import Tissue
from l3node.config import AnalysisConfig


@pytest.fixture
def slice_pair() -> tuple[np.ndarray, np.ndarray]:
    """100 x 100 labels: 1200 muscle px at 40/50 HU, 300 IMAT, 800 VAT, 1000 SAT (0.64 mm² px)."""
    labels = np.zeros((100, 100), np.uint8)
    hu = np.full((100, 100), -1000.0)
    labels[0:12, :] = Tissue.SKELETAL_MUSCLE
    hu[0:12, :] = np.where(np.arange(100) % 2 == 0, 40.0, 50.0)[None, :]
    labels[12:15, :] = Tissue.IMAT
    hu[12:15, :] = -60.0
    labels[20:28, :] = Tissue.VAT
    hu[20:28, :] = -90.0
    labels[40:50, :] = Tissue.SAT
    hu[40:50, :] = -100.0
    return hu, labels


def _muscle_plane(muscle_hu: float, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((100, 100), np.uint8)
    labels.flat[:pixels] = Tissue.SKELETAL_MUSCLE
    labels.flat[pixels : pixels + 100] = Tissue.VAT
    hu = np.where(labels == Tissue.SKELETAL_MUSCLE, muscle_hu, -90.0)
    return hu, labels


def test_exact_areas_and_hu(slice_pair):
    hu, labels = slice_pair
    result = measure(hu, labels, 0.64, PatientFacts(sex="M", height_m=1.6, weight_kg=64.0))
    muscle = result.tissues[Tissue.SKELETAL_MUSCLE]
    assert muscle.pixel_count == 1200
    assert muscle.area_cm2 == pytest.approx(1200 * 0.64 / 100)
    assert muscle.mean_hu == pytest.approx(45.0)
    assert muscle.sd_hu == pytest.approx(np.std(hu[labels == 1], ddof=1))
    assert result.tissues[Tissue.IMAT].area_cm2 == pytest.approx(300 * 0.0064)
    assert result.tissues[Tissue.VAT].area_cm2 == pytest.approx(800 * 0.0064)
    assert result.tissues[Tissue.SAT].mean_hu == pytest.approx(-100.0)
    assert result.smi_cm2_m2 == pytest.approx(1200 * 0.0064 / 1.6**2)
    assert result.sma_vat_ratio == pytest.approx(1200 / 800)
    assert result.vat_sat_ratio == pytest.approx(800 / 1000)
    assert result.bmi_kg_m2 == pytest.approx(25.0)


def test_empty_tissue_has_no_hu_and_no_ratio():
    labels = np.zeros((10, 10), np.uint8)
    labels[:2] = Tissue.SKELETAL_MUSCLE
    result = measure(np.zeros((10, 10)), labels, 1.0, PatientFacts())
    assert result.tissues[Tissue.VAT].mean_hu is None
    assert result.tissues[Tissue.VAT].area_cm2 == 0.0
    assert result.sma_vat_ratio is None


def test_smi_missing_height_is_said(slice_pair):
    hu, labels = slice_pair
    result = measure(hu, labels, 0.64, PatientFacts(sex="F", weight_kg=70.0))
    assert result.smi_cm2_m2 is None
    assert LOW_MUSCLE_MASS not in result.flags
    assert any("PatientSize missing" in note for note in result.notes)


def test_missing_sex_is_said(slice_pair):
    hu, labels = slice_pair
    result = measure(hu, labels, 0.64, PatientFacts(height_m=1.7, weight_kg=70.0))
    assert result.smi_cm2_m2 is not None
    assert any(note.startswith("PatientSex missing: muscle-mass cut-off not applied") for note in result.notes)
    assert result.muscle_mass_cutoff is None


def test_missing_weight_blocks_bmi_dependent_cutoffs(slice_pair):
    hu, labels = slice_pair
    result = measure(hu, labels, 0.64, PatientFacts(sex="M", height_m=1.7))
    assert any("PatientWeight missing" in note for note in result.notes)
    assert any("BMI unknown" in note and "muscle-mass" in note for note in result.notes)
    assert any("BMI unknown" in note and "muscle-attenuation" in note for note in result.notes)
    assert result.flags == ()


# SMI boundaries: (cutoff set, sex, height, weight (BMI), threshold SMI)
SMI_CASES = [
    ("martin2013", "M", 1.0, 24.9, 43.0),
    ("martin2013", "M", 1.0, 25.0, 53.0),
    ("martin2013", "F", 1.0, 30.0, 41.0),
    ("prado2008", "M", 1.0, 20.0, 52.4),
    ("prado2008", "F", 1.0, 20.0, 38.5),
    ("asian", "M", 1.0, 20.0, 40.31),
    ("asian", "F", 1.0, 20.0, 30.88),
]


@pytest.mark.parametrize(("name", "sex", "height", "weight", "threshold"), SMI_CASES)
def test_low_muscle_mass_boundaries(name, sex, height, weight, threshold):
    config = AnalysisConfig(cutoff_set=name)
    patient = PatientFacts(sex=sex, height_m=height, weight_kg=weight)
    # 1 px = 1 cm² (100 mm²) and height 1 m, so SMI equals the muscle pixel count.
    for pixels_x100, expect_low in ((round(threshold * 100) - 1, True), (round(threshold * 100), False)):
        hu, labels = _muscle_plane(45.0, pixels_x100)
        result = measure(hu, labels, 1.0, patient, config)  # 1 mm² px: SMI = pixels / 100
        assert result.smi_cm2_m2 == pytest.approx(pixels_x100 / 100)
        assert (LOW_MUSCLE_MASS in result.flags) is expect_low, (name, sex, pixels_x100)
        assert result.muscle_mass_cutoff is not None and f"{threshold:g}" in result.muscle_mass_cutoff


@pytest.mark.parametrize(("weight", "threshold"), [(24.9, 41.0), (25.0, 33.0)])
def test_martin_low_attenuation_boundaries(weight, threshold):
    patient = PatientFacts(sex="F", height_m=1.0, weight_kg=weight)
    below = measure(*_muscle_plane(threshold - 0.01, 5000), 1.0, patient)
    at = measure(*_muscle_plane(threshold, 5000), 1.0, patient)
    assert LOW_MUSCLE_ATTENUATION in below.flags
    assert LOW_MUSCLE_ATTENUATION not in at.flags


@pytest.mark.parametrize("name", ["prado2008", "asian"])
def test_sets_without_attenuation_cutoff_say_so(name):
    patient = PatientFacts(sex="M", height_m=1.0, weight_kg=20.0)
    result = measure(*_muscle_plane(10.0, 5000), 1.0, patient, AnalysisConfig(cutoff_set=name))
    assert LOW_MUSCLE_ATTENUATION not in result.flags
    assert any("no muscle-attenuation cut-off" in note for note in result.notes)


def test_imat_edge_convention_is_said_when_not_the_default():
    patient = PatientFacts(sex="M", height_m=1.8, weight_kg=80.0)
    default = measure(*_muscle_plane(40.0, 5000), 1.0, patient)
    outline = measure(*_muscle_plane(40.0, 5000), 1.0, patient, AnalysisConfig(imat_edge="outline"))
    assert not any("imat_edge" in note for note in default.notes)
    assert any("imat_edge: outline" in note for note in outline.notes)


def test_cutoff_functions_raise_with_reason():
    with pytest.raises(CutoffNotApplicable, match="PatientSex missing"):
        smi_cutoff("martin2013", None, 22.0)
    with pytest.raises(CutoffNotApplicable, match="BMI unknown"):
        smi_cutoff("martin2013", "M", None)
    assert smi_cutoff("martin2013", "F", None).value == 41.0  # women: no BMI needed
    with pytest.raises(CutoffNotApplicable, match="'O'"):
        smi_cutoff("prado2008", "O", 22.0)
    with pytest.raises(CutoffNotApplicable):
        attenuation_cutoff("martin2013", None)
    with pytest.raises(ValueError, match="unknown cut-off set"):
        get_cutoff_set("nope")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        measure(np.zeros((4, 4)), np.zeros((4, 5), np.uint8), 1.0)


def _dataset(**attrs) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_patient_facts_plain():
    facts = patient_facts_from_dataset(_dataset(PatientSex="F", PatientSize="1.65", PatientWeight="60"))
    assert facts == PatientFacts(sex="F", height_m=1.65, weight_kg=60.0)
    assert facts.bmi == pytest.approx(60 / 1.65**2)


def test_patient_size_in_cm_is_converted_with_note():
    facts = patient_facts_from_dataset(_dataset(PatientSex="M", PatientSize="178", PatientWeight="80"))
    assert facts.height_m == pytest.approx(1.78)
    assert any("read as cm" in note for note in facts.notes)
    result = measure(*_muscle_plane(45.0, 5000), 1.0, facts)
    assert any("read as cm" in note for note in result.notes)


def test_patient_facts_missing_and_malformed():
    facts = patient_facts_from_dataset(_dataset(PatientSize="0", PatientWeight="900"))
    assert facts.sex is None and facts.height_m is None and facts.weight_kg is None
    assert any("PatientSize" in note for note in facts.notes)
    assert any("PatientWeight" in note for note in facts.notes)
    assert patient_facts_from_dataset(pydicom.Dataset()) == PatientFacts()
