"""Real CT from ../shared/data exported as a DICOM series, to run the whole pipeline on real anatomy.

A derived copy of a real case (not a new patient): good for robustness, never counted as
independent validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from l3node.analysis.volume import read_nifti

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def nifti_to_dicom(nifti: Path, out_dir: Path, *, patient_size_m: float | None = 1.70) -> list[Path]:
    """Write ``nifti`` as an axial HFS CT series (one file per slice) in ``out_dir``."""
    volume = read_nifti(nifti)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(volume.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientSex = "REAL^DERIVED", "DERIVED-1", "M"
        if patient_size_m:
            ds.PatientSize = patient_size_m
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
        ds.ReferringPhysicianName, ds.PatientBirthDate = "", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "derived", 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription, ds.ConvolutionKernel = "Abdomen 3mm (derived from NIfTI)", "B30f"
        ds.SliceThickness = volume.spacing_mm[0]
        ds.PixelSpacing = [volume.spacing_mm[1], volume.spacing_mm[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [volume.origin_mm[0], volume.origin_mm[1], float(volume.z_mm[k])]
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.clip(volume.hu[k], -1024, 3071).astype(np.int16).tobytes()
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
