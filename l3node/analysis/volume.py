"""CT volumes in one agreed orientation: the only place axis order is defined.

Every volume inside l3node is a :class:`Volume` whose ``hu`` array has axes
``(k, row, col)``:

* ``k``   -- slice index, patient **z increasing** (inferior -> superior, DICOM LPS +z);
* ``row`` -- patient **anterior -> posterior** (DICOM LPS +y);
* ``col`` -- patient **right -> left** (DICOM LPS +x).

This is what a radiologist sees on an axial slice (patient's right on the image
left, anterior at the top) and what SimpleITK returns for an image oriented
``LPS``. Loaders below reorient whatever they read into this convention; nothing
else in the package re-invents it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pydicom

from l3node.analysis.frames import expand_frames, frame_of
from l3node.errors import SeriesRejected

if TYPE_CHECKING:  # SimpleITK is loaded only where NIfTI is read or written (a 50 MB library)
    import SimpleITK as sitk


@dataclass(frozen=True)
class Volume:
    """An axial CT volume in Hounsfield units.

    Attributes
    ----------
    hu:
        float32 array ``(k, row, col)``, see module docstring.
    spacing_mm:
        ``(dz, drow, dcol)`` voxel spacing in mm.
    origin_mm:
        LPS position (x, y, z) in mm of voxel ``[0, 0, 0]``'s centre.
    sop_instance_uids:
        For volumes read from DICOM: the SOPInstanceUID of each slice ``k``.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def z_mm(self) -> np.ndarray:
        """Patient z (mm, LPS, +superior) of each slice."""
        return self.origin_mm[2] + self.spacing_mm[0] * np.arange(self.hu.shape[0])

    def slice_index_at(self, z_mm: float) -> int:
        """Index of the slice whose centre is nearest to patient ``z_mm``.

        Raises
        ------
        ValueError
            If ``z_mm`` lies more than half a slice outside the volume.
        """
        k = int(round((z_mm - self.origin_mm[2]) / self.spacing_mm[0]))
        if not 0 <= k < self.hu.shape[0]:
            raise ValueError(f"z={z_mm:.1f} mm is outside the volume ({self.z_mm[0]:.1f}..{self.z_mm[-1]:.1f} mm)")
        return k

    def contains_z(self, z_mm: float) -> bool:
        z = self.z_mm
        half = self.spacing_mm[0] / 2
        return bool(z[0] - half <= z_mm <= z[-1] + half)

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.spacing_mm[1] * self.spacing_mm[2])

    def to_source_pixels(self, plane: np.ndarray) -> np.ndarray:
        """Map a ``(row, col)`` plane of this volume back to the source DICOM pixel grid.

        Volumes read from DICOM may have been flipped to reach the package
        convention (e.g. prone or feet-first acquisitions); anything written on a
        source image (SEG frames, overlays) must undo that flip.
        """
        if self.extra.get("flip_rows"):
            plane = plane[::-1, :]
        if self.extra.get("flip_cols"):
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image (LPS direction = identity)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.hu)
    image.SetSpacing((volume.spacing_mm[2], volume.spacing_mm[1], volume.spacing_mm[0]))
    image.SetOrigin(volume.origin_mm)
    return image


def from_sitk(image: sitk.Image, *, hu: bool = True) -> Volume:
    """Reorient any SimpleITK image to the package convention.

    Oblique directions are snapped to the nearest axes by ``DICOMOrient``; callers
    that care (DICOM series) check obliquity before.
    """
    import SimpleITK as sitk

    oriented = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(oriented)
    array = array.astype(np.float32) if hu else array
    sx, sy, sz = oriented.GetSpacing()
    return Volume(hu=array, spacing_mm=(sz, sy, sx), origin_mm=tuple(float(v) for v in oriented.GetOrigin()))


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI CT volume into the package convention."""
    import SimpleITK as sitk

    return from_sitk(sitk.ReadImage(str(path)))


def read_label_nifti(path: str | Path) -> np.ndarray:
    """Read a NIfTI label map and return its integer array in the package convention."""
    import SimpleITK as sitk

    return from_sitk(sitk.ReadImage(str(path)), hu=False).hu


@dataclass(frozen=True)
class SliceGeometry:
    """How a set of axial slices stacks into a :class:`Volume` (from headers only)."""

    order: tuple[int, ...]  # input index of each volume slice k (ascending patient z)
    flip_rows: bool
    flip_cols: bool
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    shape: tuple[int, int, int]


def check_geometry(headers: Sequence[pydicom.Dataset], *, max_gap_ratio: float = 1.5) -> SliceGeometry:
    """Check that single-frame CT headers form one regular axial volume, and how.

    Geometry is checked, not assumed: one orientation, axial within 1 degree, same
    matrix and pixel spacing, no duplicate positions, no missing slices, regular
    spacing, no tilted gantry. Pixel data is not needed.

    Raises
    ------
    SeriesRejected
        With a specific reason code (``mixed_orientation``, ``not_axial``,
        ``missing_slices``, ...) when the slices do not form one regular volume.
    """
    if len(headers) < 2:
        raise SeriesRejected("too_few_slices", f"{len(headers)} image(s); a volume needs at least 2")
    try:
        iops = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient) for ds in headers}
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
        shapes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
        spacings = {tuple(round(float(v), 4) for v in ds.PixelSpacing) for ds in headers}
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesRejected("missing_geometry", f"image plane attributes missing or invalid: {exc}") from None
    if len(iops) > 1:
        raise SeriesRejected("mixed_orientation", f"{len(iops)} different ImageOrientationPatient values")
    row_cos = np.array(next(iter(iops))[:3], float)
    col_cos = np.array(next(iter(iops))[3:], float)
    normal = np.cross(row_cos, col_cos)
    if abs(normal[2]) < np.cos(np.deg2rad(1.0)):
        raise SeriesRejected("not_axial", f"slice normal {np.round(normal, 3).tolist()} is not axial "
                             "(a tilted gantry or a reformatted plane); not resampled")
    if abs(abs(row_cos[0]) - 1) > 1e-3 or abs(abs(col_cos[1]) - 1) > 1e-3:
        raise SeriesRejected("rotated_in_plane", "image rows/columns are not aligned with patient x/y")
    if len(shapes) > 1 or len(spacings) > 1:
        raise SeriesRejected("mixed_matrix", "slices differ in matrix size or pixel spacing")

    along = positions @ normal
    order = np.argsort(along)
    what = "frames" if frame_of(headers[0]) is not None else "instances"
    steps = np.diff(along[order])
    if np.any(steps < 1e-3):
        k = int(np.argmax(steps < 1e-3))
        pair = [headers[int(i)].get("InstanceNumber", "?") for i in order[k : k + 2]]
        phases = {(str(ds.get("StackID", "")), str(ds.get("TemporalPositionIndex", ""))) for ds in headers}
        why = (f"{len(phases)} stacks or temporal positions in one multi-frame series (multi-phase?): "
               "one volume per series is analysed" if len(phases) > 1 else "two reconstructions in one series?")
        raise SeriesRejected("duplicate_slices", f"slices share a position ({int(np.sum(steps < 1e-3))} duplicate(s)), "
                             f"the first at {along[order[k]]:.1f} mm along the slice normal ({what} "
                             f"{pair[0]} and {pair[1]}): {why}")
    step = float(np.median(steps))
    if np.any(steps > max_gap_ratio * step):
        gap_at = int(np.argmax(steps))
        pair = [headers[int(i)].get("InstanceNumber", "?") for i in order[gap_at : gap_at + 2]]
        raise SeriesRejected(
            "missing_slices", f"gap of {steps[gap_at]:.2f} mm where spacing is {step:.2f} mm, between "
                              f"{along[order[gap_at]]:.1f} and {along[order[gap_at + 1]]:.1f} mm along the slice normal "
                              f"({what} {pair[0]} and {pair[1]}): incomplete transfer?"
        )
    if np.any(np.abs(steps - step) > 0.1 * step):
        raise SeriesRejected("irregular_spacing", f"slice spacing varies {steps.min():.2f}..{steps.max():.2f} mm")
    # Gantry tilt can also show as in-plane drift of ImagePositionPatient along the stack.
    drift = positions[order][-1, :2] - positions[order][0, :2]
    if np.hypot(*drift) > 0.01 * abs(along[order][-1] - along[order][0]) + 0.5:
        raise SeriesRejected("gantry_tilt", "slice origins drift in-plane (tilted gantry); not resampled")

    if normal[2] < 0:
        # Sorting along a normal that points inferior gives descending z: flip to ascending.
        order = order[::-1]
    nrow, ncol = next(iter(shapes))
    dy, dx = next(iter(spacings))  # PixelSpacing = (row spacing, column spacing)
    first = positions[order[0]]
    flip_rows, flip_cols = bool(col_cos[1] < 0), bool(row_cos[0] < 0)
    x0 = first[0] - (ncol - 1) * dx if flip_cols else first[0]
    y0 = first[1] - (nrow - 1) * dy if flip_rows else first[1]
    return SliceGeometry(
        order=tuple(int(i) for i in order),
        flip_rows=flip_rows,
        flip_cols=flip_cols,
        spacing_mm=(abs(float(positions[order[1], 2] - first[2])), float(dy), float(dx)),
        origin_mm=(float(x0), float(y0), float(first[2])),
        shape=(len(headers), int(nrow), int(ncol)),
    )


def axial_plane(hu: np.ndarray, pixel_mm: Sequence[float], caller: str) -> tuple[np.ndarray, tuple[float, float]]:
    """One axial slice as float32 and its ``(row, column)`` spacing, checked.

    Raises
    ------
    ValueError
        If ``hu`` is not 2D or a spacing is not positive (``caller`` names the function asking).
    """
    plane = np.asarray(hu, dtype=np.float32)
    if plane.ndim != 2:
        raise ValueError(f"{caller} needs a 2D slice, got shape {plane.shape}")
    dy, dx = (float(v) for v in pixel_mm)
    if dy <= 0 or dx <= 0:
        raise ValueError(f"pixel spacing must be positive, got {tuple(pixel_mm)}")
    return plane, (dy, dx)


AIR_SEEN_BELOW_HU = -500.0
"""A CT of the trunk holds air (outside the body, bowel gas, lungs) near -1000 HU; when
nothing reads below this, the stored values are not in HU."""


def check_hu_scale(volume: Volume, header: pydicom.Dataset) -> None:
    """Refuse a volume whose values cannot be Hounsfield units (no air anywhere).

    Without it, a series missing RescaleIntercept (air stored as 0) was declined as "no
    vertebral column found", which sends the reader looking in the wrong place.

    Raises
    ------
    SeriesRejected
        ``hu_scale`` with the lowest value seen and the header's rescale attributes.
    """
    lowest = float(volume.hu[:, ::2, ::2].min())
    if lowest <= AIR_SEEN_BELOW_HU:
        return
    rescale = ", ".join(f"{name} {header.get(name, 'missing')}" for name in ("RescaleIntercept", "RescaleSlope"))
    raise SeriesRejected("hu_scale", f"the lowest value is {lowest:.0f}, where air should read about -1000 HU "
                                     f"({rescale}): pixel values are not in HU")


def _hu_plane(ds: pydicom.Dataset) -> np.ndarray:
    return _rescaled(ds.pixel_array, ds)


def _rescaled(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _assemble(geometry: SliceGeometry, read_plane, uids: Sequence[str], threads: int = 1) -> Volume:
    """Fill a preallocated float32 volume plane by plane (never two copies of the stack)."""
    hu = np.empty(geometry.shape, dtype=np.float32)

    def fill(k: int) -> None:
        plane = read_plane(geometry.order[k])
        if geometry.flip_rows:
            plane = plane[::-1, :]
        if geometry.flip_cols:
            plane = plane[:, ::-1]
        hu[k] = plane

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fill, range(geometry.shape[0])))
    else:
        for k in range(geometry.shape[0]):
            fill(k)
    return Volume(
        hu=hu,
        spacing_mm=geometry.spacing_mm,
        origin_mm=geometry.origin_mm,
        sop_instance_uids=tuple(str(uids[i]) for i in geometry.order),
        extra={"flip_rows": geometry.flip_rows, "flip_cols": geometry.flip_cols},
    )


def volume_from_datasets(datasets: Sequence[pydicom.Dataset], *, max_gap_ratio: float = 1.5) -> Volume:
    """Stack single-frame axial CT datasets (with pixel data) into a :class:`Volume`.

    Raises
    ------
    SeriesRejected
        See :func:`check_geometry`.
    """
    geometry = check_geometry(datasets, max_gap_ratio=max_gap_ratio)
    volume = _assemble(geometry, lambda i: _hu_plane(datasets[i]), [ds.SOPInstanceUID for ds in datasets])
    check_hu_scale(volume, datasets[0])
    return volume


def volume_from_files(
    paths: Sequence[Path], headers: Sequence[pydicom.Dataset], *, max_gap_ratio: float = 1.5
) -> tuple[Volume, list[pydicom.Dataset]]:
    """Read one series from files: geometry from ``headers``, pixels decoded file by file.

    Only one decoded slice per thread is in memory besides the volume, which keeps
    a 512x512x300 study well under the node's memory budget. A multi-frame (Enhanced)
    CT instance stands for its frames (:func:`l3node.analysis.frames.frame_views`); it is
    decoded once, whole, and its stored pixels (2 bytes each) held while the volume fills.

    Returns
    -------
    volume, headers
        The volume and the headers in volume slice order (``headers[k]`` is slice ``k``;
        a frame view for a frame of a multi-frame instance).

    Raises
    ------
    SeriesRejected
        See :func:`check_geometry`; ``unreadable_pixels`` naming the instance whose pixel
        data cannot be decoded (truncated, unsupported compression).
    """
    paths, headers = expand_frames(paths, headers)
    geometry = check_geometry(headers, max_gap_ratio=max_gap_ratio)
    threads = min(4, os.cpu_count() or 1)
    # Frame views of a multi-frame instance share one file: decoded once, on first use.
    frames: dict[Path, np.ndarray] = {}
    frames_lock = threading.Lock()

    def read_plane(i: int) -> np.ndarray:
        ref = frame_of(headers[i])
        try:
            if ref is None:
                return _hu_plane(pydicom.dcmread(paths[i]))
            with frames_lock:
                if paths[i] not in frames:
                    pixels = pydicom.dcmread(paths[i]).pixel_array
                    frames[paths[i]] = pixels.reshape(-1, *pixels.shape[-2:])
            return _rescaled(frames[paths[i]][ref.number - 1], headers[i])
        except Exception as exc:  # truncated or undecodable pixel data: say which instance
            what = f"frame {ref.number} of" if ref is not None else f"instance {headers[i].get('InstanceNumber', '?')}"
            raise SeriesRejected(
                "unreadable_pixels",
                f"{what} (file {Path(paths[i]).name}): {type(exc).__name__}: {exc}") from exc

    volume = _assemble(geometry, read_plane, [ds.SOPInstanceUID for ds in headers], threads=threads)
    check_hu_scale(volume, headers[0])
    return volume, [headers[i] for i in geometry.order]


def read_dicom_folder(folder: str | Path) -> Volume:
    """Read every DICOM file in ``folder`` (one series) into a :class:`Volume`."""
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).iterdir()) if p.is_file()]
    return volume_from_datasets(datasets)
