"""A site's labelled cases as DICOM: a CT series and a DICOM Segmentation (SEG) of it.

Many sites keep their annotations as SEG objects next to the CT in the PACS (3D Slicer,
OHIF, dcmqi and l3node itself write them). A case folder of this kind holds, in any
subfolders, the CT series' files, and directly in the folder exactly one SEG file that references
that series:

* for L3 training, a segment coded as a vertebra (Segmented Property Type SCT "L3 vertebra",
  36470004, and its neighbours), or labelled ``L3`` when it carries no such code;
* for segmentation training, segments coded as l3node's own SEG codes them
  (:data:`l3node.outputs.codes.SEGMENT_CODINGS`: skeletal muscle; adipose tissue of skeletal
  muscle, of the abdominal cavity, of the subcutaneous tissue), or labelled with the
  :class:`~l3node.analysis.tissues.Tissue` labels that l3node's SEG uses. A SEG the node sent
  back, checked and corrected by a reader, is such a case.

Frames are placed by the source image each references, so the SEG may cover only some slices.
The CT may also be multi-frame (Enhanced or Legacy Converted Enhanced CT): its frames are its
slices, and the SEG's frames must then reference the CT instance and frame they label (as the
node's own SEG of such a CT does).
"""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from l3node.analysis.frames import MULTI_FRAME_CT, frame_of
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume, volume_from_files
from l3node.outputs.codes import SEGMENT_CODINGS

__all__ = ["VERTEBRA_CODES", "is_dicom_case", "read_dicom_case", "tissue_labels", "vertebra_mask", "vertebra_names"]

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
CT_SOP_CLASS_UIDS = frozenset({"1.2.840.10008.5.1.4.1.1.2", *MULTI_FRAME_CT})
"""CT Image Storage (one instance per slice), Enhanced and Legacy Converted Enhanced CT."""

VERTEBRA_CODES: dict[str, str] = {
    getattr(codes.SCT, f"{name}Vertebra").value: name
    for name in [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
}
"""SCT code value -> vertebra name (T1..T12, L1..L5) of a segment's Segmented Property Type."""
_LEVEL_LABEL = re.compile(r"^\s*(?:vertebra\s+)?([TL]\d{1,2})(?:\s+vertebra)?\s*$", re.IGNORECASE)


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError):
        return None


def _is_seg(header: pydicom.Dataset | None) -> bool:
    return header is not None and str(getattr(header, "SOPClassUID", "")) == SEG_SOP_CLASS_UID


def is_dicom_case(case: Path) -> bool:
    """Whether a DICOM SEG file lies directly in folder ``case``."""
    return any(_is_seg(_header(p)) for p in sorted(Path(case).iterdir()) if p.is_file())


def read_dicom_case(case: str | Path) -> tuple[Volume, hd.seg.Segmentation]:
    """The CT volume and its SEG from one case folder (SEG directly in it, CT files anywhere below).

    Raises
    ------
    ValueError
        If the folder holds no SEG or several, or not the CT series the SEG references.
    l3node.errors.SeriesRejected
        If that CT series' geometry cannot be stacked into a volume.
    """
    case = Path(case)
    segs: list[Path] = []
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in sorted(p for p in case.rglob("*") if p.is_file()):
        header = _header(path)
        if header is None:
            continue
        if _is_seg(header) and path.parent == case:
            segs.append(path)
        elif str(getattr(header, "SOPClassUID", "")) in CT_SOP_CLASS_UIDS:
            series.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if len(segs) != 1:
        raise ValueError(f"{case}: a DICOM case needs exactly one SEG file directly in its folder, found {len(segs)}")
    seg = hd.seg.segread(segs[0])
    referenced = [str(item.SeriesInstanceUID) for item in getattr(seg, "ReferencedSeriesSequence", [])]
    found = [uid for uid in referenced if uid in series]
    if not found:
        raise ValueError(f"{case}: the SEG references series {', '.join(referenced) or '(none)'}, "
                         f"but the folder holds CT series {', '.join(series) or '(none)'}")
    paths, headers = zip(*series[found[0]])
    volume, ordered = volume_from_files(list(paths), list(headers))
    frames = [frame_of(h) for h in ordered]
    if any(frames):  # multi-frame CT: the SEG's frames reference (instance, frame) per slice
        volume.extra["source_frames"] = [(str(f.instance.SOPInstanceUID), f.number) for f in frames]
    return volume, seg


def _segment_pixels(seg: hd.seg.Segmentation, volume: Volume, numbers: list[int]) -> np.ndarray:
    """``(k, row, col, len(numbers))`` booleans of those segments, in the volume's orientation."""
    if volume.sop_instance_uids is None:
        raise ValueError("the volume was not read from DICOM: its slices cannot be matched to SEG frames")
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(volume.sop_instance_uids):
        raise ValueError("no SEG frame references a slice of the CT series")
    frames = volume.extra.get("source_frames")
    if frames is None:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(volume.sop_instance_uids), segment_numbers=numbers,
            assert_missing_frames_are_empty=True, dtype=np.uint8,
        ) > 0
    else:
        pixels = np.zeros((len(frames), *volume.shape[1:], len(numbers)), bool)
        for uid in dict.fromkeys(uid for uid, _ in frames if uid in referenced):
            ks = [k for k, (u, _) in enumerate(frames) if u == uid]
            try:
                pixels[ks] = seg.get_pixels_by_source_frame(
                    source_sop_instance_uid=uid, source_frame_numbers=[frames[k][1] for k in ks],
                    segment_numbers=numbers, assert_missing_frames_are_empty=True, dtype=np.uint8,
                ) > 0
            except (ValueError, KeyError) as exc:
                raise ValueError(f"the SEG's frames do not reference frames of the multi-frame CT instance: {exc}") from exc
    if volume.extra.get("flip_rows"):
        pixels = pixels[:, ::-1]
    if volume.extra.get("flip_cols"):
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def _vertebra_name(description: pydicom.Dataset) -> str | None:
    for item in getattr(description, "SegmentedPropertyTypeCodeSequence", []):
        if str(item.CodingSchemeDesignator) in ("SCT", "SRT") and str(item.CodeValue) in VERTEBRA_CODES:
            return VERTEBRA_CODES[str(item.CodeValue)]
    match = _LEVEL_LABEL.match(str(getattr(description, "SegmentLabel", "")))
    return match.group(1).upper() if match else None


def vertebra_names(seg: hd.seg.Segmentation) -> list[str]:
    """Names of the vertebrae the SEG has segments for (``["L2", "L3", ...]``), in segment order."""
    return [name for name in map(_vertebra_name, seg.SegmentSequence) if name is not None]


def vertebra_mask(seg: hd.seg.Segmentation, volume: Volume, name: str = "L3") -> np.ndarray:
    """Boolean ``(k, row, col)`` mask of the segment that is vertebra ``name``.

    Raises
    ------
    ValueError
        If no segment, or more than one, is that vertebra, or its frames match no CT slice.
    """
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence if _vertebra_name(d) == name.upper()]
    if len(numbers) != 1:
        raise ValueError(f"the SEG needs one segment coded or labelled as vertebra {name}, found {len(numbers)}")
    return _segment_pixels(seg, volume, numbers)[..., 0]


def _tissue_of(description: pydicom.Dataset) -> Tissue | None:
    types = [str(i.CodeValue) for i in getattr(description, "SegmentedPropertyTypeCodeSequence", [])]
    regions = [str(i.CodeValue) for i in getattr(description, "AnatomicRegionSequence", [])]
    modifiers = [str(m.CodeValue) for i in getattr(description, "SegmentedPropertyTypeCodeSequence", [])
                 for m in getattr(i, "SegmentedPropertyTypeModifierCodeSequence", [])]
    for tissue, coding in SEGMENT_CODINGS.items():
        region = coding.anatomic_region
        if coding.property_type.value in types and (
                (region is None and not regions) or (region is not None and region.value in regions + modifiers)):
            return tissue
    label = str(getattr(description, "SegmentLabel", "")).strip().lower()
    return next((t for t in Tissue if t.label.lower() == label), None)


def tissue_labels(seg: hd.seg.Segmentation, volume: Volume) -> np.ndarray:
    """uint8 ``(k, row, col)`` :class:`Tissue` labels from the SEG's tissue segments (0 elsewhere).

    Raises
    ------
    ValueError
        If no segment is a tissue l3node measures, two segments are the same tissue, segments
        overlap, or the frames match no CT slice.
    """
    found = [(int(d.SegmentNumber), _tissue_of(d)) for d in seg.SegmentSequence]
    found = [(n, t) for n, t in found if t is not None]
    if not found:
        raise ValueError("the SEG has no segment coded or labelled as skeletal muscle, IMAT, VAT or SAT")
    tissues = [t for _, t in found]
    if len(set(tissues)) != len(tissues):
        raise ValueError(f"the SEG has several segments for one tissue: {[t.label for t in tissues]}")
    pixels = _segment_pixels(seg, volume, [n for n, _ in found])
    if (pixels.sum(axis=-1) > 1).any():
        raise ValueError("tissue segments overlap in the SEG: each pixel may be one tissue only")
    labels = np.zeros(pixels.shape[:3], np.uint8)
    for i, tissue in enumerate(tissues):
        labels[pixels[..., i]] = int(tissue)
    return labels
