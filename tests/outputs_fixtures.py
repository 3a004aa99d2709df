"""Small synthetic inputs for the output writers' tests: a CT series, a label map, results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from l3node.analysis.locate_l3 import L3Location, L3Status, Variant, Vertebra
from l3node.analysis.measure import Measurements, TissueMeasurement
from l3node.analysis.tissues import Tissue

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_DICOM_DIR = SHARED_DATA / "ts_example_ct_dicom"

ROWS = COLS = 128
PIXEL_MM = 0.8
ORIGIN = (-51.2, -60.0, 150.0)  # LPS mm of the first pixel of slice 0
SLICE_MM = 3.0


def make_ct_series(n_slices: int = 3, rows: int = ROWS, cols: int = COLS, seed: int = 0) -> list[pydicom.Dataset]:
    """A small axial CT series with the attributes of a real one (CT Image IOD, PS3.3 A.3)."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(n_slices):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT abdomen"
        ds.SeriesDescription = "Abdomen 3.0 B30f"
        ds.PatientName = "Test^Outputs"
        ds.PatientID = "OUT-0001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.PatientSize = "1.65"
        ds.PatientWeight = "60"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = str(SLICE_MM)
        ds.KVP = "120"
        ds.ConvolutionKernel = "B30f"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = "2"
        ds.AcquisitionNumber = "1"
        ds.InstanceNumber = str(k + 1)
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + SLICE_MM * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = str(ORIGIN[2] + SLICE_MM * k)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = (rng.integers(900, 1100, size=(rows, cols), dtype=np.int16)).tobytes()
        datasets.append(ds)
    return datasets


def make_labels(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A label map of rectangles with known pixel counts (SAT 550, muscle 200, IMAT 60, VAT 450).

    The shapes are asymmetric so that a flipped or transposed read-back fails.
    """
    labels = np.zeros((rows, cols), dtype=np.uint8)
    labels[10:20, 5:60] = Tissue.SAT  # 550 px, top-left band
    labels[30:50, 40:50] = Tissue.SKELETAL_MUSCLE  # 200 px
    labels[55:58, 70:90] = Tissue.IMAT  # 60 px
    labels[70:100, 20:35] = Tissue.VAT  # 450 px
    return labels


def hu_plane(source: pydicom.Dataset) -> np.ndarray:
    """The source image in HU (float32)."""
    return source.pixel_array.astype(np.float32) * float(source.RescaleSlope) + float(source.RescaleIntercept)


def make_measurements(
    labels: np.ndarray, hu: np.ndarray, pixel_mm: tuple[float, float], height_m: float | None
) -> Measurements:
    """Measurements computed plainly from labels and HU (the test's own ground truth)."""
    pixel_cm2 = pixel_mm[0] * pixel_mm[1] / 100.0
    tissues = {}
    for tissue in Tissue:
        mask = labels == tissue
        count = int(mask.sum())
        tissues[tissue] = TissueMeasurement(
            tissue=tissue,
            area_cm2=count * pixel_cm2,
            mean_hu=float(hu[mask].mean()) if count else None,
            sd_hu=float(hu[mask].std()) if count else None,
            pixel_count=count,
        )
    muscle = tissues[Tissue.SKELETAL_MUSCLE].area_cm2
    smi = muscle / height_m**2 if height_m else None
    notes = () if height_m else ("height missing: no SMI",)
    flags = ("low_muscle_mass",) if smi is not None and smi < 39 else ()
    rules = {}
    if {f.name for f in dataclasses.fields(Measurements)} >= {"muscle_mass_cutoff"}:
        rules["muscle_mass_cutoff"] = "test rule: SMI < 39 cm²/m²" if smi is not None else None
    return Measurements(
        tissues=tissues, smi_cm2_m2=smi, flags=flags, notes=notes, cutoff_set="martin2013", **rules
    )


def make_l3(
    z_mm: float, slice_index: int, status: L3Status = L3Status.FOUND, variant: Variant = Variant.NORMAL
) -> L3Location:
    return L3Location(
        status=status,
        z_mm=z_mm,
        slice_index=slice_index,
        confidence=0.83,
        variant=variant,
        method="count_from_sacrum",
        vertebrae=(Vertebra("L3", z_mm, z_mm + 30.0),),
        candidates_z_mm=(z_mm + 33.0,),
        notes=("rib count and sacrum count agree",),
    )


def repair_anonymised(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Fill the UIDs an anonymiser blanked in the real Siemens slices.

    SOP Class/Instance from the file meta header; one new Study and Series UID for all.
    """
    study_uid, series_uid = generate_uid(), generate_uid()
    for ds in datasets:
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = ds.StudyInstanceUID or study_uid
        ds.SeriesInstanceUID = ds.SeriesInstanceUID or series_uid
    return datasets
