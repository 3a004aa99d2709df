"""The TID 1500 Measurement Report of the L3 body composition.

Content tree (PS3.16 TID 1500; codes in :mod:`l3node.outputs.codes`)::

    Imaging Measurement Report (TID 1500)
      language, observation context (device observer, TID 1004), procedure CT,
      image library (the L3 source image)
      Imaging Measurements
        4 x Measurement Group (TID 1411 Volumetric ROI), one per tissue:
            tracking identifier = the SEG segment's Tracking UID and label
            Referenced Segment: SEG instance + segment number (no frame number) and
              Source Image for Segmentation: the CT image (no frame number; for an
              Enhanced CT, the instance and the L3 frame's number)
            finding type (segment property type), finding sites: L3 vertebra
              (+ anatomic region for the fat compartments), algorithm (TID 4019)
            Area [cm2]; Attenuation Coefficient mean and SD [HU] (absent if area 0),
              each INFERRED FROM the CT image;
            muscle only: Skeletal muscle index [cm2/m2] when height known;
            normality Abnormally low/Normal (CID 222) on SMI / muscle mean HU when a
              cut-off rule was applied (Measurements.muscle_mass_cutoff / _attenuation_cutoff)
        1 x Measurement Group (TID 1501) "Body composition at L3":
            finding site L3 vertebra; L3 localization confidence [1];
            vertebral numbering variant; needs review (Yes/No);
            TEXT: L3 localization method, comments (status, z, notes)

Why TID 1411 with Referenced Segment, not TID 1410 with Referenced Segmentation Frame:
highdicom 0.28's ``ReferencedSegmentationFrame`` writes both Referenced Frame Number and
Referenced Segment Number into the SEG IMAGE item, and ``from_segmentation`` also puts the
SEG frame number on the CT (single-frame) source reference; dciodvfy reports errors for
both (PS3.3 C.18.4.1 / 10.3 conditions). ``ReferencedSegment`` built explicitly, with
segment number only and a source image without frame numbers, is clean. A segment of a
one-frame SEG is exactly the planar region measured.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from l3node.analysis.frames import frame_of
from l3node.analysis.locate_l3 import L3Location, L3Status, Variant
from l3node.analysis.measure import Measurements, PatientFacts, TissueMeasurement
from l3node.analysis.tissues import Tissue
from l3node.config import OutputsConfig
from l3node.outputs import codes
from l3node.outputs.algorithm import AlgorithmInfo
from l3node.outputs.write_seg import check_source_image

LOW_MUSCLE_MASS = "low_muscle_mass"  # Measurements.flags values (l3node.analysis.measure)
LOW_MUSCLE_ATTENUATION = "low_muscle_attenuation"

LOW_CONFIDENCE = 0.5
"""Below this L3 localization confidence the report says "Needs review: Yes"."""

StructuredReport = hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR


def private_coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification item declaring ``99L3NODE`` (PS3.3 C.12.1.1.3.1)."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME,
            name=codes.PRIVATE_SCHEME_NAME,
            version=codes.PRIVATE_SCHEME_VERSION,
            responsible_organization="l3node",
        )
    ]


def device_observer_context(config: OutputsConfig, algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1002 observation context with the node as device observer (TID 1004).

    The Device Observer UID is derived from manufacturer, algorithm name and version,
    so the same node software always reports as the same device.
    """
    uid = generate_uid(entropy_srcs=["l3node", config.manufacturer, algorithm.name, algorithm.version])
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=uid,
                name=f"{algorithm.name} {algorithm.version}"[:64],
                manufacturer_name=config.manufacturer,
                model_name="l3node",
            ),
        )
    )


def _check_inputs(
    source_images: Sequence[pydicom.Dataset], l3_source: pydicom.Dataset, seg: pydicom.Dataset | None
) -> None:
    check_source_image(l3_source)
    studies = {ds.StudyInstanceUID for ds in source_images} | {l3_source.StudyInstanceUID}
    if len(studies) != 1:
        raise ValueError("source images and L3 image belong to different studies")
    if source_images and l3_source.SOPInstanceUID not in {ds.SOPInstanceUID for ds in source_images}:
        raise ValueError("the L3 image is not one of the source images")
    if seg is not None:
        if seg.StudyInstanceUID != l3_source.StudyInstanceUID:
            raise ValueError("the SEG is not in the study of the L3 image")
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in getattr(seg, "ReferencedSeriesSequence", [])
            for item in series.ReferencedInstanceSequence
        }
        if l3_source.SOPInstanceUID not in referenced:
            raise ValueError("the SEG was not made on the L3 image")


def _normality(measurements: Measurements, flag: str, rule_field: str) -> hd.sr.MeasurementProperties | None:
    """CID 222 normality of a value judged by a cut-off: Abnormally low when flagged, Normal
    when the cut-off rule was applied and did not flag, nothing when no rule applied (e.g.
    sex or BMI unknown for a sex/BMI-specific cut-off)."""
    if flag in measurements.flags:
        return hd.sr.MeasurementProperties(normality=codes.ABNORMALLY_LOW)
    if getattr(measurements, rule_field, None):
        return hd.sr.MeasurementProperties(normality=codes.NORMAL)
    return None


def _tissue_measurements(
    tissue_measurement: TissueMeasurement,
    measurements: Measurements,
    image_ref: hd.sr.SourceImageForMeasurement,
) -> list[hd.sr.Measurement]:
    tissue = tissue_measurement.tissue
    items = [
        hd.sr.Measurement(
            name=codes.AREA,
            value=float(tissue_measurement.area_cm2),
            unit=codes.UNIT_CM2,
            referenced_images=[image_ref],
        )
    ]
    if tissue_measurement.mean_hu is not None:
        properties = None
        if tissue is Tissue.SKELETAL_MUSCLE:
            properties = _normality(measurements, LOW_MUSCLE_ATTENUATION, "muscle_attenuation_cutoff")
        items.append(
            hd.sr.Measurement(
                name=codes.ATTENUATION,
                value=float(tissue_measurement.mean_hu),
                unit=codes.UNIT_HU,
                derivation=codes.DERIVATION_MEAN,
                properties=properties,
                referenced_images=[image_ref],
            )
        )
    if tissue_measurement.sd_hu is not None:
        items.append(
            hd.sr.Measurement(
                name=codes.ATTENUATION,
                value=float(tissue_measurement.sd_hu),
                unit=codes.UNIT_HU,
                derivation=codes.DERIVATION_SD,
                referenced_images=[image_ref],
            )
        )
    if tissue is Tissue.SKELETAL_MUSCLE and measurements.smi_cm2_m2 is not None:
        properties = _normality(measurements, LOW_MUSCLE_MASS, "muscle_mass_cutoff")
        items.append(
            hd.sr.Measurement(
                name=codes.SKELETAL_MUSCLE_INDEX,
                value=float(measurements.smi_cm2_m2),
                unit=codes.UNIT_CM2_PER_M2,
                properties=properties,
                referenced_images=[image_ref],
            )
        )
    return items


def _segment_tracking(seg: pydicom.Dataset) -> dict[int, tuple[str, str]]:
    return {
        int(item.SegmentNumber): (str(item.TrackingUID), str(item.TrackingID))
        for item in seg.SegmentSequence
        if "TrackingUID" in item and "TrackingID" in item
    }


def _source_image(item_class: type, l3_source: pydicom.Dataset):
    """An IMAGE reference to the L3 slice: the CT image, or the multi-frame instance and its frame."""
    frame = frame_of(l3_source)
    return item_class(l3_source.SOPClassUID, l3_source.SOPInstanceUID,
                      referenced_frame_numbers=[frame.number] if frame is not None else None)


def tissue_groups(
    l3_source: pydicom.Dataset,
    seg: pydicom.Dataset,
    measurements: Measurements,
    algorithm: AlgorithmInfo,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per measured tissue, referencing its SEG segment (number == Tissue)."""
    segments = {int(item.SegmentNumber) for item in seg.SegmentSequence}
    tracking = _segment_tracking(seg)
    image_ref = _source_image(hd.sr.SourceImageForMeasurement, l3_source)
    groups = []
    for tissue in Tissue:
        measured = measurements.tissues.get(tissue)
        if measured is None:
            continue
        if int(tissue) not in segments:
            raise ValueError(f"the SEG has no segment {int(tissue)} for {tissue.label}")
        tracking_uid, tracking_id = tracking.get(int(tissue), (generate_uid(), tissue.label))
        coding = codes.SEGMENT_CODINGS[tissue]
        sites = [hd.sr.FindingSite(codes.FINDING_SITE_L3)]
        if coding.anatomic_region is not None:
            sites.append(hd.sr.FindingSite(coding.anatomic_region))
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id),
                # Built explicitly (see module docstring): segment number only, source image
                # without frame numbers.
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=int(tissue),
                    source_images=[
                        _source_image(hd.sr.SourceImageForSegmentation, l3_source)
                    ],
                ),
                finding_type=coding.property_type,
                finding_category=codes.SEGMENT_CATEGORY,
                algorithm_id=algorithm.sr_identification(),
                finding_sites=sites,
                measurements=_tissue_measurements(measured, measurements, image_ref),
            )
        )
    return groups


def needs_review(l3: L3Location, measurements: Measurements | None = None) -> bool:
    """Whether a radiologist should check the result: the level uncertain, of low confidence or
    in a variant spine, or the slice flagged (body cut by the field of view, metal)."""
    return (
        l3.status is not L3Status.FOUND
        or l3.confidence < LOW_CONFIDENCE
        or l3.variant is not Variant.NORMAL
        or bool(measurements is not None and measurements.quality_flags)
    )


def _comments(l3: L3Location, measurements: Measurements, patient: PatientFacts) -> list[str]:
    lines = [f"L3 localization status: {l3.status.value}"]
    if l3.z_mm is not None:
        lines.append(f"L3 inferior endplate at patient z = {l3.z_mm:.1f} mm")
    if l3.candidates_z_mm:
        lines.append("other candidate endplates z (mm): " + ", ".join(f"{z:.1f}" for z in l3.candidates_z_mm))
    if measurements.cutoff_set is not None:
        lines.append(f"cut-off set: {measurements.cutoff_set}")
    for rule_field in ("muscle_mass_cutoff", "muscle_attenuation_cutoff"):
        rule = getattr(measurements, rule_field, None)
        if rule:
            lines.append(f"cut-off applied: {rule}")
    if measurements.flags:
        lines.append(f"flags: {', '.join(measurements.flags)}")
    if measurements.quality_flags:
        lines.append(f"quality flags: {', '.join(measurements.quality_flags)}")
    lines.extend(l3.notes)
    lines.extend(measurements.notes)
    lines.extend(getattr(patient, "notes", ()))
    return [line[:1024] for line in lines if line]


def summary_group(
    l3_source: pydicom.Dataset,
    l3: L3Location,
    measurements: Measurements,
    patient: PatientFacts,
    algorithm: AlgorithmInfo,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group with the vertebral level and how it was found."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Body composition at L3"),
        finding_type=codes.BODY_COMPOSITION_SUMMARY,
        algorithm_id=algorithm.sr_identification(),
        finding_sites=[hd.sr.FindingSite(codes.FINDING_SITE_L3)],
        measurements=[
            hd.sr.Measurement(name=codes.L3_CONFIDENCE, value=float(l3.confidence), unit=codes.UNIT_NONE)
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.ANATOMIC_VARIANT, codes.VARIANT_CODES[l3.variant]),
            hd.sr.QualitativeEvaluation(codes.NEEDS_REVIEW, codes.YES if needs_review(l3, measurements) else codes.NO),
        ],
        source_images=[_source_image(hd.sr.SourceImageForMeasurementGroup, l3_source)],
    )
    # Free text has no highdicom parameter in TID 1501; TEXT children are allowed by the
    # Comprehensive SR IOD's relationship constraints (PS3.3 A.35.3.3.1.2).
    container = group[0]
    container.ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.L3_METHOD, value=l3.method[:1024] or "unspecified", relationship_type="CONTAINS"
        )
    )
    for line in _comments(l3, measurements, patient):
        container.ContentSequence.append(
            hd.sr.TextContentItem(name=codes.COMMENT, value=line, relationship_type="CONTAINS")
        )
    return group


def _sr_class(config: OutputsConfig) -> type[StructuredReport]:
    return hd.sr.Comprehensive3DSR if config.sr_sop_class == "comprehensive3d" else hd.sr.ComprehensiveSR


def _build_sr(config: OutputsConfig, evidence: list, content, **final) -> StructuredReport:
    """One SR instance in its own new series, numbered and described from the configuration."""
    return _sr_class(config)(
        evidence=evidence,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=config.sr.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=config.manufacturer,
        is_complete=True,
        institution_name=config.institution_name,
        series_description=config.sr.series_description,
        coding_schemes=private_coding_schemes(),
        **final,
    )


def make_sr(
    source_images: Sequence[pydicom.Dataset],
    l3_source: pydicom.Dataset,
    seg: hd.seg.Segmentation | pydicom.Dataset,
    measurements: Measurements,
    l3: L3Location,
    patient: PatientFacts,
    config: OutputsConfig,
    algorithm: AlgorithmInfo,
) -> StructuredReport:
    """Build the TID 1500 Measurement Report.

    Parameters
    ----------
    source_images
        The analysed series (used to check that the L3 image belongs to it; may be empty).
    l3_source
        The CT image the tissues were measured on (the SEG's source image).
    seg
        The SEG from :func:`~l3node.outputs.write_seg.make_seg` (segment number == Tissue).
    measurements, l3
        The analysis results.
    patient
        Patient facts; only their notes are written, and a comment when the height is
        missing (the SMI itself comes from ``measurements``).
    config
        ``outputs`` section: ``sr`` series number/description, ``sr_sop_class``,
        manufacturer, institution.
    algorithm
        Written as TID 4019 in each group and as the device observer.

    Returns
    -------
    highdicom.sr.ComprehensiveSR or highdicom.sr.Comprehensive3DSR
        Completion COMPLETE, verification UNVERIFIED, in the study of the source.

    Raises
    ------
    ValueError
        If the images, SEG and source disagree (other study, SEG not made on the L3
        image, missing segment), or the L3 location has no slice (not found).
    """
    _check_inputs(source_images, l3_source, seg)
    if l3.status is L3Status.NOT_IN_FIELD_OF_VIEW:
        raise ValueError("L3 was not found: write a declined report instead")
    if patient.height_m is None and measurements.smi_cm2_m2 is None and not any(
        "height" in note.lower() or "patientsize" in note.lower() for note in measurements.notes
    ):
        measurements = dataclasses.replace(
            measurements, notes=(*measurements.notes, "patient height (PatientSize) missing: no skeletal muscle index")
        )
    report = hd.sr.MeasurementReport(
        observation_context=device_observer_context(config, algorithm),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=[
            *tissue_groups(l3_source, seg, measurements, algorithm),
            summary_group(l3_source, l3, measurements, patient, algorithm),
        ],
        title=codes.REPORT_TITLE,
        referenced_images=[l3_source],
    )
    # PRELIMINARY: machine-made, not reviewed by a person (also UNVERIFIED)
    return _build_sr(config, [l3_source, seg], report, is_final=False)


def make_declined_sr(
    source_images: Sequence[pydicom.Dataset],
    code: str,
    detail: str,
    config: OutputsConfig,
    algorithm: AlgorithmInfo,
) -> StructuredReport:
    """A short report in the study saying that no body composition result will come.

    Not a TID 1500 report (there is nothing measured): a Diagnostic Imaging Report
    container (LN 18748-4, CID 7000) with the device observer context (TID 1002), a
    "Body composition analysis declined: Yes" item, the reason code and the detail
    as text, referencing the series it was about.

    Parameters
    ----------
    source_images
        Images of the study (at least one; those of the rejected series when there is
        one). The report copies patient and study from the first and lists all as evidence.
    code, detail
        :class:`~l3node.errors.StudyDeclined` ``code`` and ``detail``.
    config, algorithm
        As for :func:`make_sr`.

    Raises
    ------
    ValueError
        If ``source_images`` is empty or spans several studies, or ``code`` is empty.
    """
    if not source_images:
        raise ValueError("a declined report needs at least one image of the study")
    if len({ds.StudyInstanceUID for ds in source_images}) != 1:
        raise ValueError("source images belong to different studies")
    if not code.strip():
        raise ValueError("the declined reason code is empty")
    root = hd.sr.ContainerContentItem(name=codes.DECLINED_REPORT_TITLE)
    items = list(hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE))
    items.extend(device_observer_context(config, algorithm))
    items.append(
        hd.sr.CodeContentItem(
            name=dcm_codes.DCM.ProcedureReported,
            value=codes.PROCEDURE_REPORTED,
            relationship_type="HAS CONCEPT MOD",
        )
    )
    items.append(hd.sr.CodeContentItem(name=codes.ANALYSIS_DECLINED, value=codes.YES, relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(name=codes.DECLINED_REASON, value=code[:1024], relationship_type="CONTAINS"))
    items.append(
        hd.sr.TextContentItem(name=codes.COMMENT, value=(detail or code)[:1024], relationship_type="CONTAINS")
    )
    root.ContentSequence = hd.sr.ContentSequence(items)
    return _build_sr(config, list(source_images), root)
