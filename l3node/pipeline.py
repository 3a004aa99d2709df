"""Process one study, top to bottom.

    read headers -> select series -> build volume (geometry checks) -> locate L3
    -> segment tissues on the L3 slice -> measure -> SEG + TID 1500 SR + overlay
    -> results.json

The same function serves the node (``l3node serve``) and the offline command
(``l3node run``). Bad input never raises out of :func:`analyse_study`: a study that
cannot be analysed ends ``declined`` with a stable reason code, and (if configured)
a short SR saying why, so nobody waits for a result that will not come.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from l3node import __version__
from l3node.analysis.frames import frame_of
from l3node.analysis.locate_l3 import L3Location, L3Status, locate_l3
from l3node.analysis.measure import Measurements, measure, patient_facts_from_dataset
from l3node.analysis.second_opinion import weigh_second_opinion
from l3node.analysis.segment import averaged_slices, segment_at_l3
from l3node.analysis.slice_quality import check_slice
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume, volume_from_files
from l3node.config import Config
from l3node.errors import SeriesRejected, StudyDeclined
from l3node.logs import get_logger
from l3node.node.select_series import select_series
from l3node.node.spool import InvalidUID, check_uid
from l3node.outputs import AlgorithmInfo, fallback_algorithm_info, load_algorithm_info, make_declined_sr, make_overlay, make_seg, make_sr

log = get_logger(__name__)

RESULTS_SCHEMA_VERSION = 1


@dataclass
class StudyOutcome:
    """What one analysis of one study produced; ``results`` is results.json's content."""

    status: Literal["done", "declined"]
    reason: str  # "" when done; "<code>: <detail>" when declined
    output_files: list[Path] = field(default_factory=list)  # DICOM objects to send, in send order
    results: dict = field(default_factory=dict)
    selected_series_uid: str | None = None
    rejected_series: dict[str, str] = field(default_factory=dict)  # series UID -> reason
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class _Analysed:
    series_uid: str
    datasets: list[pydicom.Dataset]  # headers (no pixel data), datasets[k] is volume slice k
    volume: Volume
    l3: L3Location


class _Stopwatch:
    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = round(self.timings_s.get(name, 0.0) + time.perf_counter() - start, 4)


def analyse_study(study_dir: Path, out_dir: Path, config: Config) -> StudyOutcome:
    """Analyse every DICOM file under ``study_dir`` (one study) and write results into ``out_dir``.

    Writes ``out_dir/results.json`` and the DICOM outputs (SEG, SR, overlay; or a
    declined SR) and returns the outcome.

    Raises
    ------
    OSError
        Only when ``out_dir`` cannot be written; bad input is a declined outcome.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    watch = _Stopwatch()
    rejected: dict[str, str] = {}
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    try:
        with watch.stage("read_headers"):
            headers = read_headers(study_dir, rejected)
        with watch.stage("select_series"):
            candidates = choose_series(headers, config, rejected)
        analysed = _analyse_first_usable(candidates, headers, config, rejected, watch)
        outcome = _write_results(analysed, config, out_dir, rejected, watch)
    except StudyDeclined as declined:
        outcome = _decline(declined, headers, config, out_dir, rejected, watch)
    _write_json(out_dir / "results.json", outcome.results)
    return outcome


def warm_up(config: Config) -> None:
    """Pay one-time costs at start-up rather than on the first study.

    highdicom reads its tables of the DICOM standard (about 0.6 s) the first time an
    object is built, and torch models load once per process; the node calls this
    before it accepts associations. A model that cannot load is reported at its first use.
    """
    try:
        from highdicom import _standard_utils  # private, hence the guard

        _standard_utils.get_module_attribute_map()
        _standard_utils.get_iod_module_map()
    except (ImportError, AttributeError):  # a highdicom without them simply pays later
        pass
    from l3node.analysis.neural import ModelError, preload

    wanted = [("l3", "l3_mip")] if config.analysis.l3_second_opinion else []
    if config.analysis.segmentation == "network":
        wanted.append(("seg", "tissue_unet"))
    for task, name in wanted:
        try:
            preload(task, weights_dir(config) / name, config.analysis.device)
        except ModelError as exc:
            log.warning("model_unavailable", model=name, error=str(exc))


def weights_dir(config: Config) -> Path:
    """The folder of trained models: the configured one, or the weights/ shipped with l3node."""
    from l3node.analysis.neural import weights_root  # torch is imported only here

    return weights_root(config.analysis)


def segmentation_algorithm(config: Config) -> AlgorithmInfo:
    """How the tissues were segmented, for SEG and SR (the network's manifest, or the rules).

    Raises
    ------
    ValueError
        If the network is configured but its manifest is unreadable.
    """
    if config.analysis.segmentation == "network":
        return load_algorithm_info(weights_dir(config), "tissue_unet")
    return fallback_algorithm_info()


def read_headers(study_dir: Path, rejected: dict[str, str]) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Headers (no pixels) of every readable DICOM file, grouped by SeriesInstanceUID.

    Unreadable files, and files without the UIDs that place them in a study and series
    (empty in files from some anonymisers; the SCP refuses such instances), are recorded
    in ``rejected`` under their file name.

    Raises
    ------
    StudyDeclined
        ``no_images`` when the folder holds no usable DICOM file, with why.
    """
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(p for p in Path(study_dir).rglob("*") if p.is_file()):
        if path.name in {"results.json", "DICOMDIR"} or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, AttributeError, EOFError, ValueError, OSError) as exc:
            rejected[f"file:{path.name}"] = f"unreadable: {type(exc).__name__}"
            continue
        bad_uids = []
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            try:
                check_uid(ds.get(name), name)
            except InvalidUID as exc:
                bad_uids.append(str(exc))
        if bad_uids:
            rejected[f"file:{path.name}"] = "unusable: " + ", ".join(bad_uids)
            continue
        by_series[str(ds.SeriesInstanceUID)].append((path, ds))
    if not by_series:
        why = Counter(rejected.values()).most_common(2)
        detail = "; ".join(f"{n} file(s) {reason}" for reason, n in why)
        raise StudyDeclined("no_images", "no usable DICOM file in the study" + (f" ({detail})" if detail else ""))
    return dict(by_series)


def choose_series(
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]], config: Config, rejected: dict[str, str]
) -> list[str]:
    """Series UIDs to try, best first, by the selection rules in the configuration.

    Raises
    ------
    StudyDeclined
        ``no_eligible_series`` with every series' reason.
    """
    selection = select_series({uid: [ds for _, ds in items] for uid, items in headers.items()}, config.selection)
    rejected.update(selection.rejected)
    if not selection.selected:
        reasons = "; ".join(f"{uid[-12:]}: {why}" for uid, why in selection.rejected.items())
        raise StudyDeclined("no_eligible_series", reasons or "no series")
    # "ranked" holds every eligible series, best first: when the best one's geometry
    # fails, the next is tried (with ``analyse: all`` every one is analysed).
    for uid in selection.ranked:
        log.info("series_candidate", series_uid=uid, why=selection.why_selected.get(uid))
    return list(selection.ranked)


def _analyse_first_usable(
    candidates: list[str],
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]],
    config: Config,
    rejected: dict[str, str],
    watch: _Stopwatch,
) -> list[_Analysed]:
    """Build volumes and locate L3 in the candidates, best first.

    With ``selection.analyse: best`` the first series whose geometry holds is the
    one; with ``all`` every usable series is analysed.
    """
    analysed: list[_Analysed] = []
    unlocated: list[StudyDeclined] = []
    for series_uid in candidates:
        try:
            with watch.stage("load_volume"):
                paths = [path for path, _ in headers[series_uid]]
                volume, ordered = volume_from_files(paths, [ds for _, ds in headers[series_uid]])
        except SeriesRejected as exc:
            rejected[series_uid] = f"{exc.code}: {exc.detail}"
            log.info("series_rejected", series_uid=series_uid, reason=exc.code)
            continue
        except Exception as exc:  # undecodable pixel data and the like
            rejected[series_uid] = f"unreadable_pixels: {type(exc).__name__}: {exc}"
            log.warning("series_unreadable", series_uid=series_uid, error=type(exc).__name__)
            continue
        with watch.stage("locate_l3"):
            l3 = locate_l3(volume, config.analysis)
            if config.analysis.l3_second_opinion:
                l3 = weigh_second_opinion(l3, volume, weights_dir(config), config.analysis.device)
        log.info("l3_located", series_uid=series_uid, status=l3.status.value, z_mm=l3.z_mm,
                 confidence=round(l3.confidence, 3), variant=l3.variant.value)
        if l3.status is L3Status.NOT_IN_FIELD_OF_VIEW:
            rejected[series_uid] = "l3_not_in_field_of_view: " + (l3.method or "")
            unlocated.append(StudyDeclined("l3_not_in_field_of_view", l3.method or "L3 is outside the scan"))
            continue
        if l3.slice_index is None or l3.z_mm is None:
            # Nothing to count from (e.g. a short crop of the spine): never guess a slice.
            rejected[series_uid] = "l3_not_identified: " + (l3.method or "no vertebral level could be named")
            unlocated.append(StudyDeclined("l3_not_identified", l3.method or "no vertebral level could be named"))
            continue
        analysed.append(_Analysed(series_uid, ordered, volume, l3))
        rejected.pop(series_uid, None)  # a fallback series was listed as "not the best"
        if config.selection.analyse == "best":
            break
    if analysed:
        return analysed
    if unlocated:
        raise unlocated[0]
    raise StudyDeclined("no_usable_series", "; ".join(f"{u[-12:]}: {r}" for u, r in rejected.items()))


def _write_results(
    analysed: list[_Analysed], config: Config, out_dir: Path, rejected: dict[str, str], watch: _Stopwatch
) -> StudyOutcome:
    algorithm = segmentation_algorithm(config)
    output_files: list[Path] = []
    series_results = []
    for item in analysed:
        # The first (best) series writes seg.dcm, sr.dcm, overlay.dcm; others add _1, _2, ...
        suffix = f"_{len(series_results)}" if series_results else ""
        series_results.append(_measure_and_write(item, config, algorithm, out_dir, suffix, output_files, watch))
    first = series_results[0]
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "status": "done",
        "reason": "",
        **first,
        "other_series": series_results[1:],
        "rejected_series": rejected,
        "timings_s": watch.timings_s,
        "software": {"name": "l3node", "version": __version__, "algorithm": dataclasses.asdict(algorithm)},
    }
    return StudyOutcome(
        status="done",
        reason="",
        output_files=output_files,
        results=results,
        selected_series_uid=analysed[0].series_uid,
        rejected_series=rejected,
        timings_s=watch.timings_s,
    )


def _averaging_notes(volume: Volume, slice_index: int, config: Config) -> tuple[str, ...]:
    """Say when the measurements are not those of the L3 slice alone (``analysis.average_slices_mm``)."""
    if config.analysis.average_slices_mm <= 0:
        return ()
    if config.analysis.segmentation == "network":
        return ("average_slices_mm ignored with segmentation: network (the L3 slice alone is measured)",)
    indices = averaged_slices(volume, slice_index, config.analysis.average_slices_mm)
    if len(indices) == 1:
        return (f"average_slices_mm {config.analysis.average_slices_mm:g}: no other slice within that distance "
                f"(spacing {volume.spacing_mm[0]:g} mm); the L3 slice alone is measured",)
    z = volume.z_mm
    return (f"measured on {len(indices)} slices within {config.analysis.average_slices_mm:g} mm of L3 "
            f"(z {z[indices[0]]:.1f} to {z[indices[-1]]:.1f} mm): per-pixel majority label, HU averaged",)


def _measure_and_write(
    item: _Analysed,
    config: Config,
    algorithm: AlgorithmInfo,
    out_dir: Path,
    suffix: str,
    output_files: list[Path],
    watch: _Stopwatch,
) -> dict:
    """Segment, measure and write the three DICOM objects of one analysed series."""
    l3, volume = item.l3, item.volume
    assert l3.slice_index is not None  # checked in _analyse_first_usable
    source = item.datasets[l3.slice_index]
    with watch.stage("segment"):
        if config.analysis.segmentation == "network":
            from l3node.analysis.neural import segment_slice_network  # torch is imported only here

            hu_plane = volume.hu[l3.slice_index]
            labels = segment_slice_network(hu_plane, volume.spacing_mm[1:], config.analysis)
        else:
            labels, hu_plane = segment_at_l3(volume, l3.slice_index, config.analysis)
    with watch.stage("measure"):
        patient = patient_facts_from_dataset(source)
        measurements = measure(hu_plane, labels, volume.pixel_area_mm2, patient, config.analysis)
        # The L3 slice itself (not an average): a body cut by the field of view, metal.
        quality = check_slice(volume.hu[l3.slice_index], volume.spacing_mm[1:])
        measurements = dataclasses.replace(measurements, quality_flags=quality.flags,
                                           notes=(*measurements.notes, *_averaging_notes(volume, l3.slice_index, config),
                                                  *quality.notes))
    source_labels = volume.to_source_pixels(labels)
    source_hu = volume.to_source_pixels(hu_plane)
    outputs: dict[str, dict] = {}
    with watch.stage("write_outputs"):
        if config.outputs.seg.enabled or config.outputs.sr.enabled:
            seg = make_seg(source, source_labels, config.outputs, algorithm)
        if config.outputs.seg.enabled:
            outputs["seg"] = _save(seg, out_dir / f"seg{suffix}.dcm", output_files)
        if config.outputs.sr.enabled:
            sr = make_sr(item.datasets, source, seg, measurements, l3, patient, config.outputs, algorithm)
            outputs["sr"] = _save(sr, out_dir / f"sr{suffix}.dcm", output_files)
        if config.outputs.overlay.enabled:
            overlay = make_overlay(source, source_hu, source_labels, measurements, l3, config.outputs)
            outputs["overlay"] = _save(overlay, out_dir / f"overlay{suffix}.dcm", output_files)
    log.info("study_measured", series_uid=item.series_uid,
             sma_cm2=round(measurements.tissues[Tissue.SKELETAL_MUSCLE].area_cm2, 2), smi=measurements.smi_cm2_m2)
    return {
        "study_instance_uid": str(source.StudyInstanceUID),
        "series_instance_uid": item.series_uid,
        "l3": l3_to_dict(l3, source),
        "tissues": measurements_to_dict(measurements),
        "smi_cm2_m2": _round(measurements.smi_cm2_m2),
        "flags": list(measurements.flags),
        "quality_flags": list(measurements.quality_flags),
        "notes": list(measurements.notes),
        "patient": {"sex": patient.sex, "height_m": patient.height_m, "weight_kg": patient.weight_kg},
        "outputs": outputs,
    }


def _decline(
    declined: StudyDeclined,
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]],
    config: Config,
    out_dir: Path,
    rejected: dict[str, str],
    watch: _Stopwatch,
) -> StudyOutcome:
    log.info("study_declined", reason=declined.code)
    output_files: list[Path] = []
    outputs: dict[str, dict] = {}
    study_uid = None
    images = [ds for items in headers.values() for _, ds in items if "SOPInstanceUID" in ds]
    if images:
        study_uid = str(images[0].StudyInstanceUID)
    if config.outputs.declined_report and images:
        with watch.stage("write_outputs"):
            try:
                algorithm = segmentation_algorithm(config)
                sr = make_declined_sr(_one_series(images), declined.code, declined.detail, config.outputs, algorithm)
                outputs["declined_sr"] = _save(sr, out_dir / "declined_sr.dcm", output_files)
            except Exception as exc:  # a header too broken to reference: still decline cleanly
                log.warning("declined_report_failed", error=f"{type(exc).__name__}: {exc}")
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "status": "declined",
        "reason": f"{declined.code}: {declined.detail}",
        "study_instance_uid": study_uid,
        "series_instance_uid": None,
        "l3": {"status": "not_in_field_of_view" if declined.code == "l3_not_in_field_of_view" else None,
               "z_mm": None, "confidence": None, "variant": None},
        "tissues": None,
        "smi_cm2_m2": None,
        "outputs": outputs,
        "rejected_series": rejected,
        "timings_s": watch.timings_s,
        "software": {"name": "l3node", "version": __version__},
    }
    return StudyOutcome("declined", results["reason"], output_files, results, None, rejected, watch.timings_s)


def _one_series(images: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The images of the largest series, to reference from a declined report."""
    by_series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in images:
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    return max(by_series.values(), key=len)


def l3_to_dict(l3: L3Location, source: pydicom.Dataset | None = None) -> dict:
    """The ``l3`` block of results.json."""
    frame = frame_of(source) if source is not None else None
    return {
        "status": l3.status.value,
        "z_mm": _round(l3.z_mm),
        "slice_index": l3.slice_index,
        "sop_instance_uid": str(source.SOPInstanceUID) if source is not None else None,
        "frame_number": frame.number if frame is not None else None,
        "confidence": _round(l3.confidence, 3),
        "variant": l3.variant.value,
        "method": l3.method,
        "candidates_z_mm": [_round(z) for z in l3.candidates_z_mm],
        "vertebrae": [
            {"name": v.name, "z_inferior_mm": _round(v.z_inferior_mm), "z_superior_mm": _round(v.z_superior_mm)}
            for v in l3.vertebrae
        ],
        "notes": list(l3.notes),
    }


def measurements_to_dict(measurements: Measurements) -> dict:
    """The ``tissues`` block of results.json, keyed by tissue name."""
    return {
        tissue.key: {
            "area_cm2": _round(m.area_cm2),
            "mean_hu": _round(m.mean_hu),
            "sd_hu": _round(m.sd_hu),
        }
        for tissue, m in measurements.tissues.items()
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _save(dataset: pydicom.Dataset, path: Path, output_files: list[Path]) -> dict:
    """Write a DICOM object atomically and remember it for sending."""
    tmp = path.with_suffix(".tmp")
    dataset.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    output_files.append(path)
    return {
        "file": path.name,
        "sop_class_uid": str(dataset.SOPClassUID),
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
