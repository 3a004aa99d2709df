"""The DICOM Segmentation of the four tissues on the L3 source image.

Choices (PS3.3 A.51 Segmentation IOD, C.8.20):

* BINARY segmentation, not Label Map: Orthanc 1.10 (and most PACS, whose DCMTK does
  not know SOP class ...66.7) reject label maps.
* Always four segments, numbered as :class:`~l3node.analysis.tissues.Tissue` (1 muscle,
  2 IMAT, 3 VAT, 4 SAT), one frame each, empty frames kept
  (``omit_empty_frames=False``). Segment numbers and frame numbers are therefore the
  same in every SEG we write, which the SR relies on, and a tissue with zero area is
  still visibly "segmented, found nothing" rather than missing. dciodvfy does not
  object to an all-zero frame.
* The frame geometry is the source image's own (highdicom copies Image Position /
  Orientation and Pixel Spacing from the single source image), so viewers overlay it
  unflipped. For a frame of an Enhanced CT the source is the multi-frame instance and
  the L3 frame is found by its position (Referenced Frame Number in the derivation).
* Codes: :mod:`l3node.outputs.codes` (category SCT 85756007 Tissue; types per CID 7151/7166).
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import l3node
from l3node.analysis.frames import frame_of
from l3node.analysis.tissues import Tissue
from l3node.config import OutputsConfig
from l3node.outputs import codes
from l3node.outputs.algorithm import AlgorithmInfo

CONTENT_LABEL = "L3_TISSUES"
DEVICE_SERIAL_NUMBER = "0"  # the node has no serial of its own; the Enhanced Equipment module needs one


def check_source_image(source: pydicom.Dataset) -> None:
    """Check the attributes the output writers copy or reference.

    Raises
    ------
    ValueError
        If a UID, the geometry or the image size is missing or empty.
    """
    missing = [
        keyword
        for keyword in (
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "FrameOfReferenceUID",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "Rows",
            "Columns",
        )
        if not getattr(source, keyword, None)
    ]
    if missing:
        raise ValueError(f"source image lacks {', '.join(missing)}")


def segment_descriptions(algorithm: AlgorithmInfo) -> list[hd.seg.SegmentDescription]:
    """The four segment descriptions, numbered as :class:`Tissue`, with fresh Tracking UIDs."""
    descriptions = []
    for tissue in Tissue:
        coding = codes.SEGMENT_CODINGS[tissue]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=int(tissue),
                segment_label=tissue.label,
                segmented_property_category=codes.SEGMENT_CATEGORY,
                segmented_property_type=coding.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm.seg_identification(),
                tracking_uid=generate_uid(),
                tracking_id=tissue.label,
                anatomic_regions=[coding.anatomic_region] if coding.anatomic_region is not None else None,
                display_color=hd.color.CIELabColor.from_rgb(*coding.rgb),
            )
        )
    return descriptions


def make_seg(
    source: pydicom.Dataset,
    labels: np.ndarray,
    config: OutputsConfig,
    algorithm: AlgorithmInfo,
    *,
    coding_schemes: Sequence[hd.coding_schemes.CodingSchemeIdentificationItem] | None = None,
) -> hd.seg.Segmentation:
    """Build the BINARY SEG of the tissue label map on the L3 source image.

    Parameters
    ----------
    source
        The chosen L3 CT image (single-frame), with its UIDs and geometry.
    labels
        ``(Rows, Columns)`` integer array in the source image's pixel grid, values
        0 (background) or a :class:`Tissue` value.
    config
        ``outputs`` section: ``seg.series_number``/``series_description``,
        ``manufacturer``, ``institution_name``.
    algorithm
        Written as each segment's algorithm identification.
    coding_schemes
        Extra Coding Scheme Identification items (none needed: the SEG uses only SCT/DCM).

    Returns
    -------
    highdicom.seg.Segmentation
        Four segments (segment number == Tissue value), one frame each, in the
        source image's Study, Patient and Frame of Reference.

    Raises
    ------
    ValueError
        If ``labels`` does not match the source image's size, is not integer, or holds
        values other than 0..4; if the source image lacks UIDs or geometry.
    """
    check_source_image(source)
    labels = np.asarray(labels)
    if labels.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"labels shape {labels.shape} != source image ({source.Rows}, {source.Columns})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    unexpected = sorted(set(np.unique(labels).tolist()) - {0, *map(int, Tissue)})
    if unexpected:
        raise ValueError(f"labels hold values that are not tissues: {unexpected}")

    frame = frame_of(source)
    seg = hd.seg.Segmentation(
        # A frame of a multi-frame CT: the instance, and the frame found by its position
        # (highdicom writes the Referenced Frame Number).
        source_images=[frame.instance if frame is not None else source],
        # A 2D label array: highdicom splits it into one binary frame per segment number.
        pixel_array=labels.astype(np.uint8)[np.newaxis],
        plane_positions=None if frame is None else [
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in source.ImagePositionPatient])],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm),
        series_instance_uid=generate_uid(),
        series_number=config.seg.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=config.manufacturer,
        manufacturer_model_name="l3node",
        software_versions=l3node.__version__,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description="Skeletal muscle, IMAT, VAT and SAT at the L3 inferior endplate",
        content_label=CONTENT_LABEL,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        series_description=config.seg.series_description,
        institution_name=config.institution_name,
        coding_schemes=coding_schemes,
    )
    return seg
