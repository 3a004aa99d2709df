"""Series selection: rules from ``config.yaml`` (:class:`SelectionConfig`) applied to headers.

Only header attributes are read (datasets read with ``stop_before_pixels``); the
geometric checks that need every slice position (gaps, duplicates, spacing) are
done later by ``l3node.analysis.volume``. Each series that is not chosen gets a
reason ``"<code>: <detail>"`` with a stable code, in the order the rules are
applied:

``non_image_object``, ``modality``, ``mixed_sop_classes``, ``localizer``, ``image_type_excluded``,
``image_type_missing``, ``orientation_unknown``, ``not_axial``,
``mixed_orientation``, ``slice_thickness_unknown``, ``slice_thickness``,
``description_excluded``, ``description_not_included``, ``too_few_instances``;
with ``analyse: best``, the eligible series after the first get ``not_best``.

Ranking of eligible series (best first): the index of the first
``preferred_kernels`` regex matching ConvolutionKernel (no match ranks last), then
closeness of the slice thickness to ``preferred_thickness_mm``, then more
instances, then the series UID (deterministic).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.uid import UID

from l3node.analysis.frames import MULTI_FRAME_CT
from l3node.config import SelectionConfig

# PS3.4 B.5: CT image storage SOP classes whose pixels are a CT slice or volume.
CT_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
"""All three are analysed: single-frame CT (an instance per slice) and the multi-frame Enhanced
and Legacy Converted Enhanced CT (their frames as slices, :mod:`l3node.analysis.frames`)."""
# A slice whose normal is within this angle of patient z counts as axial; tilted
# gantry acquisitions (usually < 30 degrees) pass here and are resampled or
# rejected by the volume module.
AXIAL_MAX_ANGLE_DEG = 30.0
_SAME_ORIENTATION_TOL = 1e-3


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of :func:`select_series`.

    Attributes
    ----------
    selected:
        Series to analyse, best first: one with ``analyse: best``, every eligible
        one with ``analyse: all``; empty when none is eligible.
    ranked:
        Every eligible series, best first.
    rejected:
        Series UID -> ``"<code>: <detail>"`` for every series not selected.
    why_selected:
        Series UID -> a sentence on its rank, for the study record.
    """

    selected: tuple[str, ...]
    ranked: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)
    why_selected: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Facts:
    kernel: str
    thickness_mm: float
    instances: int


def _functional(ds: pydicom.Dataset, sequence: str, keyword: str) -> Any:
    """An attribute of an enhanced multi-frame object: shared groups, else the first frame's."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items:
            seq = items[0].get(sequence)
            if seq and keyword in seq[0]:
                return seq[0].get(keyword)
    return None


def _attr(ds: pydicom.Dataset, keyword: str, sequence: str | None = None) -> Any:
    value = ds.get(keyword)
    if value is None and sequence is not None:
        value = _functional(ds, sequence, keyword)
    return value


def _normal(ds: pydicom.Dataset) -> np.ndarray | None:
    iop = _attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0.5 else None


def _frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _thickness(datasets: Sequence[pydicom.Dataset], normal: np.ndarray) -> float | None:
    value = _attr(datasets[0], "SliceThickness", "PixelMeasuresSequence")
    try:
        if value is not None and float(value) > 0:
            return float(value)
    except (TypeError, ValueError):
        pass
    # Tolerant reading: no SliceThickness -> the spacing of the slice positions.
    positions = []
    for ds in datasets:
        ipp = ds.get("ImagePositionPatient")
        if ipp is not None and len(ipp) == 3:
            positions.append(float(np.dot(np.asarray(ipp, float), normal)))
    if len(positions) >= 2:
        steps = np.diff(np.sort(positions))
        steps = steps[steps > 1e-3]
        if steps.size:
            return float(np.median(steps))
    return None


def _kernel(ds: pydicom.Dataset) -> str:
    value = _attr(ds, "ConvolutionKernel", "CTReconstructionSequence")
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _check(datasets: Sequence[pydicom.Dataset], rules: SelectionConfig) -> tuple[str | None, _Facts | None]:
    """(reason, None) for a rejected series, (None, facts) for an eligible one."""
    first = datasets[0]
    sop_classes = {str(ds.get("SOPClassUID", "")) for ds in datasets}
    modality = str(first.get("Modality", "")).upper()
    foreign = sorted(sop_classes - CT_IMAGE_SOP_CLASSES.keys())
    if foreign:
        names = ", ".join(UID(s).name if s else "missing SOPClassUID" for s in foreign)
        return f"non_image_object: {names} (Modality {modality or 'missing'}) is not a CT image", None
    if modality not in {m.upper() for m in rules.modalities}:
        return f"modality: {modality or 'missing'} not in {', '.join(rules.modalities)}", None
    if len(sop_classes) > 1:
        names = ", ".join(sorted(CT_IMAGE_SOP_CLASSES[s] for s in sop_classes))
        return f"mixed_sop_classes: {names} in one series (one reconstruction stored two ways?)", None

    image_types = set()
    for ds in datasets:
        image_types.update(str(v).upper() for v in (ds.get("ImageType") or ()))
        frame_type = _functional(ds, "CTImageFrameTypeSequence", "FrameType")
        if frame_type:
            image_types.update(str(v).upper() for v in frame_type)
    if "LOCALIZER" in image_types or "SCOUT" in image_types:
        return "localizer: ImageType contains LOCALIZER/SCOUT", None
    excluded = sorted(image_types & {t.upper() for t in rules.image_type_excluded})
    if excluded:
        return f"image_type_excluded: ImageType contains {', '.join(excluded)}", None
    if "VOLUME" in image_types and sop_classes <= MULTI_FRAME_CT:
        # Enhanced CT has no AXIAL image flavor (PS3.3 C.8.16.1.3): a volume of slices is
        # VOLUME; that its slices are axial is checked on their orientation below.
        image_types.add("AXIAL")
    missing = [t for t in rules.image_type_required if t.upper() not in image_types]
    if missing:
        return f"image_type_missing: ImageType lacks {', '.join(missing)}", None

    normals = [_normal(ds) for ds in datasets]
    if any(n is None for n in normals):
        return "orientation_unknown: ImageOrientationPatient missing or invalid", None
    reference = normals[0]
    if any(1.0 - abs(float(np.dot(reference, n))) > _SAME_ORIENTATION_TOL for n in normals[1:]):
        return "mixed_orientation: instances of the series have different orientations", None
    angle = math.degrees(math.acos(min(1.0, abs(float(reference[2])))))
    if angle > AXIAL_MAX_ANGLE_DEG:
        return f"not_axial: slice normal is {angle:.0f} degrees from the patient axis", None

    thickness = _thickness(datasets, reference)
    if thickness is None:
        return "slice_thickness_unknown: no SliceThickness and no slice positions", None
    if not rules.slice_thickness_mm.min <= thickness <= rules.slice_thickness_mm.max:
        return (
            f"slice_thickness: {thickness:g} mm outside {rules.slice_thickness_mm.min:g}.."
            f"{rules.slice_thickness_mm.max:g} mm"
        ), None

    description = str(first.get("SeriesDescription", ""))
    if rules.description_exclude and re.search(rules.description_exclude, description):
        return f"description_excluded: {description!r} matches {rules.description_exclude!r}", None
    if rules.description_include and not re.search(rules.description_include, description):
        return f"description_not_included: {description!r} does not match {rules.description_include!r}", None

    instances = sum(_frames(ds) for ds in datasets)
    if instances < rules.min_instances:
        return f"too_few_instances: {instances} < {rules.min_instances}", None
    return None, _Facts(_kernel(first), thickness, instances)


def _kernel_rank(kernel: str, patterns: Sequence[str]) -> int:
    for index, pattern in enumerate(patterns):
        if kernel and re.search(pattern, kernel):
            return index
    return len(patterns)


def select_series(datasets_by_series: dict[str, list[pydicom.Dataset]], rules: SelectionConfig) -> SelectionResult:
    """Choose the series of one study to analyse.

    Parameters
    ----------
    datasets_by_series:
        Series UID -> the headers of its instances (``stop_before_pixels``).
    rules:
        The selection rules from the configuration.

    Returns
    -------
    SelectionResult
        Selected series (ranked) and a reason for every other series.

    Raises
    ------
    re.error
        Never for a validated :class:`SelectionConfig` (its regexes are checked).
    """
    rejected: dict[str, str] = {}
    eligible: dict[str, _Facts] = {}
    for series_uid, datasets in datasets_by_series.items():
        if not datasets:
            rejected[series_uid] = "too_few_instances: 0 instances"
            continue
        reason, facts = _check(datasets, rules)
        if reason is not None:
            rejected[series_uid] = reason
        else:
            eligible[series_uid] = facts  # type: ignore[assignment]

    def key(uid: str) -> tuple:
        facts = eligible[uid]
        return (
            _kernel_rank(facts.kernel, rules.preferred_kernels),
            abs(facts.thickness_mm - rules.preferred_thickness_mm),
            -facts.instances,
            uid,
        )

    ranked = tuple(sorted(eligible, key=key))
    why = {}
    for position, uid in enumerate(ranked, start=1):
        facts = eligible[uid]
        k = _kernel_rank(facts.kernel, rules.preferred_kernels)
        kernel_note = f"kernel {facts.kernel!r} matches preference {k + 1}" if k < len(rules.preferred_kernels) else f"kernel {facts.kernel!r} matches no preference"
        why[uid] = f"rank {position} of {len(ranked)}: {kernel_note}, {facts.thickness_mm:g} mm, {facts.instances} instances"
    if rules.analyse == "best":
        selected = ranked[:1]
        for uid in ranked[1:]:
            rejected[uid] = f"not_best: eligible but ranked below {ranked[0]} ({why[uid]})"
    else:
        selected = ranked
    return SelectionResult(selected=selected, ranked=ranked, rejected=rejected, why_selected={u: why[u] for u in selected})
