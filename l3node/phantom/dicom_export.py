"""Write a phantom as a CT Image Storage series (PS3.3 A.3), as NIfTI, and its ground truth.

Layout written by :func:`main_phantom`::

    out/
      dicom/            one file per slice, nothing else (read_dicom_folder reads it as is)
      nifti/            ct.nii.gz, vertebrae.nii.gz, tissues.nii.gz, structures.nii.gz, compartments.nii.gz,
                        vertebral_bodies_and_discs.nii.gz
      ground_truth.json beside the series folder
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         UID, generate_uid)

from l3node import __version__
from l3node.analysis.volume import to_sitk
from l3node.phantom.generate import Phantom, make_phantom

# Image orientation (row cosine, column cosine) that scanners write for each patient position.
ORIENTATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}
COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
_INTERCEPT = -1024.0


def _person_name(value: str) -> str:
    return value if "^" in value else f"{value}^"


def _base_dataset(phantom: Phantom, *, patient_name: str, patient_id: str, study_uid: str, series_uid: str,
                  frame_uid: str, series_description: str, series_number: int, accession_number: str,
                  when: dt.datetime) -> Dataset:
    p, acq = phantom.patient, phantom.acquisition
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "l3node phantom"
    ds.InstitutionName = "l3node synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN PELVIS" if "abdomen" in acq["scan_range"] else "CT CHEST"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "make_phantom"
    ds.SoftwareVersions = __version__
    ds.PatientName = _person_name(patient_name)
    ds.PatientID = patient_id
    birth_year = when.year - int(p["age_years"])
    ds.PatientBirthDate = f"{birth_year:04d}0101"
    ds.PatientSex = p["sex"]
    ds.PatientAge = f"{int(p['age_years']):03d}Y"
    ds.PatientSize = f"{p['height_m']:.2f}"
    ds.PatientWeight = f"{p['weight_kg']:.1f}"
    ds.BodyPartExamined = "ABDOMEN" if "abdomen" in acq["scan_range"] or acq["scan_range"] == "l3_edge" else "CHEST"
    ds.SliceThickness = f"{acq['slice_thickness_mm']:g}"
    ds.SpacingBetweenSlices = f"{phantom.volume.spacing_mm[0]:g}"
    ds.KVP = f"{acq.get('kvp', 120.0):g}"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{acq['field_of_view_mm']:.2f}"
    ds.GantryDetectorTilt = f"{float(acq.get('gantry_tilt_deg') or 0.0):g}"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "200"
    ds.Exposure = "100"
    ds.FilterType = "BODY"
    ds.ConvolutionKernel = acq["convolution_kernel"]
    ds.PatientPosition = acq["position"]
    if acq["phase"] != "noncontrast":
        ds.ContrastBolusAgent = "IODINATED CONTRAST"
        ds.ContrastBolusRoute = "IV"
    else:
        ds.ContrastBolusAgent = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.volume.shape[1:]
    ds.PixelSpacing = [f"{phantom.volume.spacing_mm[1]:g}", f"{phantom.volume.spacing_mm[2]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "ABDOMEN"
    ds.RescaleIntercept = f"{_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_dicom_series(phantom: Phantom, out_dir: str | Path, *, transfer_syntax: str = ExplicitVRLittleEndian,
                       patient_name: str = "PHANTOM^L3NODE", patient_id: str | None = None,
                       study_uid: str | None = None, series_uid: str | None = None,
                       series_description: str | None = None, series_number: int = 2,
                       accession_number: str | None = None, study_datetime: dt.datetime | None = None) -> list[Path]:
    """Write one CT Image Storage file per slice into ``out_dir`` (created; nothing else written there).

    Orientation follows the patient position as scanners write it (see :data:`ORIENTATION`);
    instance 1 is the first slice acquired (most superior for head-first). A non-zero
    ``gantry_tilt_deg`` tilts ImageOrientationPatient and shifts ImagePositionPatient along y
    (pixel data not resampled): the geometry of a tilted acquisition, for rejection tests.

    Raises
    ------
    ValueError
        If ``transfer_syntax`` is not uncompressed little endian or one of :data:`COMPRESSED`.
    RuntimeError
        If no installed encoder can compress to the requested transfer syntax.
    """
    syntax = UID(transfer_syntax)
    if syntax not in (ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian) + COMPRESSED:
        raise ValueError(f"unsupported transfer syntax {syntax}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acq = phantom.acquisition
    seed = int(phantom.ground_truth.get("seed", 0))
    study_uid = study_uid or generate_uid(entropy_srcs=[str(seed), phantom.ground_truth["variant"], "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[study_uid, "series", str(series_number)])
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame"])
    when = study_datetime or dt.datetime(2024, 1, 1, 8, 0, 0) + dt.timedelta(days=seed % 3650, minutes=seed % 600)
    description = series_description or f"Phantom {phantom.ground_truth['variant']} {acq['slice_thickness_mm']:g}mm"
    base = _base_dataset(phantom, patient_name=patient_name, patient_id=patient_id or f"PH{seed:06d}",
                         study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                         series_description=description, series_number=series_number,
                         accession_number=accession_number or f"A{seed:07d}", when=when)
    volume = phantom.volume
    row_cos, col_cos = ORIENTATION[acq["position"]]
    tilt = np.deg2rad(float(acq.get("gantry_tilt_deg") or 0.0))
    col_dir = (col_cos[0], col_cos[1] * np.cos(tilt), col_cos[1] * -np.sin(tilt))
    n_rows, n_cols = volume.shape[1:]
    dz, dy, dx = volume.spacing_mm
    x0, y0, _ = volume.origin_mm
    first_x = x0 if row_cos[0] > 0 else x0 + (n_cols - 1) * dx
    first_y = y0 if col_cos[1] > 0 else y0 + (n_rows - 1) * dy
    stored = np.clip(np.round(volume.hu - _INTERCEPT), 0, 4095).astype(np.uint16)
    head_first = acq["position"].startswith("HF")
    order = range(volume.shape[0] - 1, -1, -1) if head_first else range(volume.shape[0])
    paths = []
    for number, k in enumerate(order, start=1):
        ds = Dataset()
        ds.update(base)
        plane = stored[k]
        if row_cos[0] < 0:
            plane = plane[:, ::-1]
        if col_cos[1] < 0:
            plane = plane[::-1, :]
        z = float(volume.z_mm[k])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{first_x:.4f}", f"{first_y + z * np.tan(tilt):.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_dir)]
        ds.SliceLocation = f"{z:.4f}"
        ds.ContentTime = ds.AcquisitionTime = base.StudyTime
        ds.SmallestImagePixelValue = int(plane.min())
        ds.LargestImagePixelValue = int(plane.max())
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        if syntax in COMPRESSED:
            try:
                ds.compress(syntax, np.ascontiguousarray(plane))
            except Exception as exc:  # pydicom raises several types when no encoder is available
                raise RuntimeError(f"cannot encode {syntax.name}: {exc}") from exc
        elif syntax != ExplicitVRLittleEndian:
            meta.TransferSyntaxUID = syntax
        path = out / f"CT{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(phantom: Phantom, out_dir: str | Path) -> list[Path]:
    """Write ``ct.nii.gz`` (int16 HU), ``vertebrae.nii.gz``, ``tissues.nii.gz``, ``structures.nii.gz``,
    ``compartments.nii.gz`` (1 muscle, 2 visceral, 3 subcutaneous) and
    ``vertebral_bodies_and_discs.nii.gz`` (1 body, 2 disc) into ``out_dir``."""
    import SimpleITK as sitk  # loaded only where NIfTI is written, as in l3node.analysis.volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = to_sitk(phantom.volume)
    paths = []
    arrays = {"ct": phantom.volume.hu.astype(np.int16), "vertebrae": phantom.vertebra_labels,
              "tissues": phantom.tissue_labels}
    if phantom.structure_labels is not None:
        arrays["structures"] = phantom.structure_labels
    if phantom.compartment_labels is not None:
        arrays["compartments"] = phantom.compartment_labels
    if phantom.body_disc_labels is not None:
        arrays["vertebral_bodies_and_discs"] = phantom.body_disc_labels
    for name, array in arrays.items():
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        path = out / f"{name}.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        paths.append(path)
    return paths


def write_ground_truth(phantom: Phantom, path: str | Path) -> Path:
    """Write the ground truth (plus label names) as JSON."""
    path = Path(path)
    truth = dict(phantom.ground_truth)
    truth["vertebra_names"] = {str(k): v for k, v in phantom.vertebra_names.items()}
    truth["structure_names"] = {str(k): v for k, v in phantom.structure_names.items()}
    truth["compartment_names"] = {str(k): v for k, v in phantom.compartment_names.items()}
    path.write_text(json.dumps(truth, indent=2, sort_keys=True))
    return path


def main_phantom(variant: str, seed: int, out: Path, **options) -> Path:
    """CLI hook: make a phantom and write ``out/dicom``, ``out/nifti`` and ``out/ground_truth.json``.

    Options ``transfer_syntax``, ``patient_name``, ``patient_id`` go to :func:`write_dicom_series`;
    the others to :func:`~l3node.phantom.make_phantom`.

    Raises
    ------
    ValueError
        For an unknown variant or option.
    """
    export = {k: options.pop(k) for k in ("transfer_syntax", "patient_name", "patient_id") if k in options}
    phantom = make_phantom(variant, seed, **options)
    out = Path(out)
    write_dicom_series(phantom, out / "dicom", **export)
    write_nifti(phantom, out / "nifti")
    write_ground_truth(phantom, out / "ground_truth.json")
    return out
