"""Enhanced CT as slices: one header per frame of a multi-frame CT instance.

Enhanced CT Image Storage and Legacy Converted Enhanced CT Image Storage put a series in
one instance (or a few): the per-frame functional groups carry each frame's position,
and the shared or per-frame groups its orientation, pixel spacing, thickness, rescale and
kernel. The volume, the series checks and the outputs work on one header per slice, as a
single-frame CT series has them. :func:`frame_views` gives each frame such a header, a
*frame view*: the instance's header without its per-frame groups, with the frame's own
attributes at the top level, and a :class:`FrameRef` back to the instance and frame
number. Outputs that reference the L3 slice reference the instance and that frame
(:func:`frame_of`); the pixels come from one decode of the instance
(:func:`l3node.analysis.volume.volume_from_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset

from l3node.errors import SeriesRejected

__all__ = ["FrameRef", "MULTI_FRAME_CT", "expand_frames", "frame_of", "frame_views", "is_multi_frame"]

MULTI_FRAME_CT = frozenset({"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"})
"""Enhanced CT Image Storage and Legacy Converted Enhanced CT Image Storage."""

# (functional group sequence, attributes it holds) flattened onto each frame view.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PlanePositionSequence", ("ImagePositionPatient",)),
    ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
    ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness")),
    ("PixelValueTransformationSequence", ("RescaleIntercept", "RescaleSlope", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth")),
    ("CTReconstructionSequence", ("ConvolutionKernel",)),
    ("FrameContentSequence", ("TemporalPositionIndex", "StackID")),
)
_REPLACED = {"PerFrameFunctionalGroupsSequence", "PixelData", "NumberOfFrames", "InstanceNumber",
             *(keyword for _, keywords in _GROUPS for keyword in keywords)}


@dataclass(frozen=True)
class FrameRef:
    """Where a frame view's slice lives: the multi-frame instance's header and the frame (1-based)."""

    instance: Dataset
    number: int


def is_multi_frame(ds: Dataset) -> bool:
    """Whether ``ds`` is an Enhanced or Legacy Converted Enhanced CT instance (one or more frames)."""
    return str(ds.get("SOPClassUID", "")) in MULTI_FRAME_CT


def frame_of(ds: Dataset) -> FrameRef | None:
    """The instance and frame a frame view stands for; None for a single-frame CT header."""
    ref = getattr(ds, "_l3node_frame", None)
    return ref if isinstance(ref, FrameRef) else None


def _group_value(item: Dataset | None, sequence: str, keyword: str):
    if item is None:
        return None
    seq = item.get(sequence)
    if seq and keyword in seq[0]:
        return seq[0][keyword].value
    return None


def frame_views(ds: Dataset) -> list[Dataset]:
    """One single-frame-like header per frame of a multi-frame CT instance, in frame order.

    Parameters
    ----------
    ds:
        The instance's header (pixel data not needed).

    Returns
    -------
    list of pydicom.Dataset
        Frame views: the instance's attributes (shared, not copied: do not modify them)
        plus, per frame, Image Position/Orientation, Pixel Spacing, Slice Thickness,
        Rescale, window, kernel, temporal position and stack from its per-frame groups, else
        the shared ones;
        InstanceNumber is the frame number. :func:`frame_of` gives the instance and frame.

    Raises
    ------
    SeriesRejected
        ``missing_geometry`` when the frame count and the per-frame groups disagree.
    """
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n_frames = 0
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if n_frames < 1 or len(per_frame) != n_frames:
        raise SeriesRejected("missing_geometry", f"multi-frame CT with NumberOfFrames {ds.get('NumberOfFrames')!r} "
                             f"and {len(per_frame)} per-frame functional group item(s)")
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    base = [elem for elem in ds if elem.keyword not in _REPLACED]
    views = []
    for number, item in enumerate(per_frame, start=1):
        view = Dataset()
        for elem in base:
            view.add(elem)
        if hasattr(ds, "file_meta"):
            view.file_meta = ds.file_meta
        for sequence, keywords in _GROUPS:
            for keyword in keywords:
                value = _group_value(item, sequence, keyword)
                if value is None:
                    value = _group_value(shared, sequence, keyword)
                if value is not None:
                    setattr(view, keyword, value)
        view.InstanceNumber = number
        view._l3node_frame = FrameRef(ds, number)
        views.append(view)
    return views


def expand_frames(paths: Sequence[Path], headers: Sequence[Dataset]) -> tuple[list[Path], list[Dataset]]:
    """Each multi-frame CT header replaced by its frame views (the file path repeated); others kept.

    Raises
    ------
    SeriesRejected
        See :func:`frame_views`.
    """
    out_paths: list[Path] = []
    out_headers: list[Dataset] = []
    for path, ds in zip(paths, headers):
        views = frame_views(ds) if is_multi_frame(ds) else [ds]
        out_paths.extend([path] * len(views))
        out_headers.extend(views)
    return out_paths, out_headers

