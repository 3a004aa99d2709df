"""Series geometry: what stacks into a volume, what is refused and why, and orientation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from l3node.analysis.volume import check_geometry, read_nifti, volume_from_datasets, volume_from_files
from l3node.errors import SeriesRejected

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _slice(k: int, z: float, iop=(1, 0, 0, 0, 1, 0), origin=(-50.0, -40.0), size=(8, 10)) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageOrientationPatient = list(iop)
    ds.ImagePositionPatient = [origin[0], origin[1], z]
    ds.PixelSpacing = [0.5, 0.8]  # row spacing (y), column spacing (x)
    ds.Rows, ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    pixels = np.arange(size[0] * size[1], dtype=np.int16).reshape(size) + 1000 * k
    ds.PixelData = pixels.tobytes()
    return ds


def _series(n: int = 5, step: float = 2.5, **kw) -> list[Dataset]:
    return [_slice(k, -100.0 + step * k, **kw) for k in range(n)]


def test_slices_in_any_order_stack_by_ascending_z():
    series = _series()
    shuffled = [series[i] for i in (3, 0, 4, 1, 2)]
    volume = volume_from_datasets(shuffled)
    assert volume.shape == (5, 8, 10)
    assert volume.spacing_mm == (2.5, 0.5, 0.8)
    assert volume.origin_mm == (-50.0, -40.0, -100.0)
    np.testing.assert_allclose(volume.z_mm, [-100, -97.5, -95, -92.5, -90])
    assert volume.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in series)
    assert volume.hu[2, 0, 0] == 2000 - 1024  # rescale applied, slice k=2 holds the third z
    assert volume.slice_index_at(-95.4) == 2


def test_flipped_rows_and_columns_are_brought_to_lps_and_back():
    """Rows running anterior (col cosine -y) and columns running right (-x) are flipped."""
    series = _series(iop=(-1, 0, 0, 0, -1, 0), origin=(50.0, 40.0))
    volume = volume_from_datasets(series)
    source = series[0].pixel_array.astype(np.float32) - 1024
    np.testing.assert_array_equal(volume.hu[0], source[::-1, ::-1])
    np.testing.assert_array_equal(volume.to_source_pixels(volume.hu[0]), source)
    # voxel [0,0,0] is the most right-anterior one: x = 50 - 9*0.8, y = 40 - 7*0.5
    assert volume.origin_mm[:2] == pytest.approx((50 - 9 * 0.8, 40 - 7 * 0.5))


def test_files_and_datasets_give_the_same_volume(tmp_path):
    series = _series()
    paths = []
    for k, ds in enumerate(series):
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(tmp_path / f"{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    volume, ordered = volume_from_files(paths[::-1], headers[::-1])
    np.testing.assert_array_equal(volume.hu, volume_from_datasets(series).hu)
    assert [ds.SOPInstanceUID for ds in ordered] == [ds.SOPInstanceUID for ds in series]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda s: s[:1], "too_few_slices"),
        (lambda s: s[:2] + s[3:], "missing_slices"),
        (lambda s: s + [copy.deepcopy(s[1])], "duplicate_slices"),
        (lambda s: s[:4] + [_slice(4, -100 + 2.5 * 3 + 2.0)], "irregular_spacing"),
        (lambda s: s[:4] + [_slice(4, -90.0, iop=(1, 0, 0, 0, 0.9998, 0.02))], "mixed_orientation"),
        (lambda s: [_slice(k, -100 + 2.5 * k, iop=(1, 0, 0, 0, 0, -1)) for k in range(5)], "not_axial"),
        (lambda s: [_slice(k, -100 + 2.5 * k, iop=(1, 0, 0, 0, 0.966, -0.259)) for k in range(5)], "not_axial"),
        (lambda s: [_slice(k, -100 + 2.5 * k, origin=(-50.0, -40.0 + 1.5 * k)) for k in range(5)], "gantry_tilt"),
        (lambda s: s[:4] + [_slice(4, -90.0, size=(8, 12))], "mixed_matrix"),
    ],
    ids=["one", "gap", "duplicate", "irregular", "mixed-orientation", "coronal", "tilted-15deg", "drift",
         "matrix"],
)
def test_bad_geometry_is_refused_with_a_reason(mutate, code):
    with pytest.raises(SeriesRejected) as info:
        check_geometry(mutate(_series()))
    assert info.value.code == code
    assert info.value.detail


def test_duplicates_and_gaps_are_located_in_the_reason():
    series = _series()
    for number, ds in enumerate(series, start=1):
        ds.InstanceNumber = number
    with pytest.raises(SeriesRejected) as info:
        check_geometry(series[:2] + series[3:])
    assert "between -97.5 and -92.5 mm along the slice normal (instances 2 and 4)" in info.value.detail
    copy_of_third = copy.deepcopy(series[2])
    copy_of_third.InstanceNumber = 99
    with pytest.raises(SeriesRejected) as info:
        check_geometry(series + [copy_of_third])
    assert "the first at" in info.value.detail
    assert "(instances 3 and 99)" in info.value.detail or "(instances 99 and 3)" in info.value.detail


def test_missing_geometry_attributes_are_a_reason_not_a_crash():
    series = _series()
    del series[2].ImagePositionPatient
    with pytest.raises(SeriesRejected, match="missing_geometry"):
        check_geometry(series)


@pytest.mark.skipif(not (SHARED_DATA / "ts_example_ct").is_dir(), reason="../shared/data not present")
def test_nifti_in_ras_and_pir_read_in_the_package_convention():
    ras = read_nifti(SHARED_DATA / "ts_example_ct" / "ct.nii.gz")
    assert ras.shape == (112, 101, 122)  # (k, row, col) from a 122x101x112 RAS file
    assert ras.z_mm[0] == pytest.approx(94.3, abs=0.1) and ras.spacing_mm == (3.0, 3.0, 3.0)
    pir = read_nifti(SHARED_DATA / "tptbox_l3_crop" / "sub-ct_label-22_ct.nii.gz")
    assert np.all(np.diff(pir.z_mm) > 0)
    assert pir.spacing_mm == pytest.approx((1.5, 1.5, 1.5))


def test_enhanced_ct_frames_read_as_its_slices(tmp_path):
    """One multi-frame instance gives the volume of its slices; a frame's own rescale wins over
    the shared one; the instance's header is not changed by reading it."""
    import highdicom as hd

    from tests.node_helpers import make_series

    slices = make_series("1.2.826.0.1.3680043.10.511.7", 4, size=8)
    paths = []
    for k, ds in enumerate(slices):
        paths.append(tmp_path / f"{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    single, _ = volume_from_files(paths, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths])

    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices[::-1], series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1)
    z_of_frame = [float(item.PlanePositionSequence[0].ImagePositionPatient[2])
                  for item in enhanced.PerFrameFunctionalGroupsSequence]
    own = Dataset()
    own.RescaleIntercept, own.RescaleSlope, own.RescaleType = -1000, 1, "HU"
    shifted = z_of_frame.index(-100.0 + 3.0)  # the second slice, wherever its frame is
    enhanced.PerFrameFunctionalGroupsSequence[shifted].PixelValueTransformationSequence = [own]
    enhanced.save_as(tmp_path / "enhanced.dcm")
    header = pydicom.dcmread(tmp_path / "enhanced.dcm", stop_before_pixels=True)
    before = copy.deepcopy(header)

    volume, views = volume_from_files([tmp_path / "enhanced.dcm"], [header])
    assert volume.shape == single.shape and volume.spacing_mm == single.spacing_mm
    assert volume.origin_mm == single.origin_mm
    np.testing.assert_array_equal(volume.hu[[0, 2, 3]], single.hu[[0, 2, 3]])
    np.testing.assert_array_equal(volume.hu[1], single.hu[1] - 1000)
    assert [float(v.ImagePositionPatient[2]) for v in views] == [-100.0, -97.0, -94.0, -91.0]
    assert [v.SOPInstanceUID for v in views] == [header.SOPInstanceUID] * 4
    assert header == before and "ImagePositionPatient" not in header

    # Two frames at one position are named as frames, not instances.
    header.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = \
        header.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient
    with pytest.raises(SeriesRejected) as caught:
        volume_from_files([tmp_path / "enhanced.dcm"], [header])
    assert caught.value.code == "duplicate_slices"
    assert "(frames 1 and 2)" in caught.value.detail or "(frames 2 and 1)" in caught.value.detail
    assert caught.value.detail.endswith("two reconstructions in one series?")
    # Two temporal positions of one volume (a multi-phase Enhanced CT) are named as such.
    for number, item in enumerate(header.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].TemporalPositionIndex = 1 + number % 2
    with pytest.raises(SeriesRejected) as caught:
        volume_from_files([tmp_path / "enhanced.dcm"], [header])
    assert caught.value.code == "duplicate_slices"
    assert "2 stacks or temporal positions in one multi-frame series (multi-phase?)" in caught.value.detail


def test_the_node_does_not_load_simpleitk():
    """SimpleITK is for NIfTI only; the node reads DICOM with pydicom. Not loading it keeps
    about 90 MB out of the node's peak memory (bench/bench_node.py: 0.91 against 1.00 GB)."""
    code = ("import sys, l3node.service, l3node.pipeline, l3node.phantom; "
            "print('SimpleITK' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
