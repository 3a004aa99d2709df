"""Every coded concept written by l3node, in one place.

Standard codes come from pydicom's copy of the DICOM PS3.16 tables (so the code
meanings are spelled as the standard spells them); each is listed with the
context group (CID) or template (TID) it is used in. Concepts that no standard
vocabulary offers are private codes of the scheme :data:`PRIVATE_SCHEME`
(``99L3NODE``); they are few, listed in :data:`PRIVATE_CODES`, and declared in
each SR's Coding Scheme Identification Sequence (PS3.3 C.12.1.1.3.1).

Segment coding (PS3.3 C.8.20.2, CID 7150 category / CID 7151 type, both
extensible). The three fat compartments share the type "Adipose tissue" (CID
7166 Common Tissue Segmentation Types) and are told apart by the Anatomic Region
Sequence, the DICOM way of qualifying a property type by location:

========== ============================ ================================ ==========================
segment    category                     type                             anatomic region
========== ============================ ================================ ==========================
1 muscle   SCT 85756007 Tissue          SCT 127954009 Skeletal muscle    --
2 IMAT     SCT 85756007 Tissue          SCT 55603005 Adipose tissue      SCT 127954009 Skeletal muscle
3 VAT      SCT 85756007 Tissue          SCT 55603005 Adipose tissue      SCT 52731004 Abdominal cavity
4 SAT      SCT 85756007 Tissue          SCT 55603005 Adipose tissue      SCT 71966008 Subcutaneous tissue
========== ============================ ================================ ==========================
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from l3node.analysis.locate_l3 import Variant
from l3node.analysis.tissues import Tissue

PRIVATE_SCHEME = "99L3NODE"
"""Private coding scheme designator (PS3.16 section 8.2: '99' prefix is private)."""

PRIVATE_SCHEME_NAME = "l3node private codes"
PRIVATE_SCHEME_VERSION = "1"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


# --- segmentation (SEG) -------------------------------------------------------------------

SEGMENT_CATEGORY: Code = codes.SCT.Tissue  # SCT 85756007, CID 7150
"""Segmented property category of every segment (CID 7150 Segmentation Property Categories)."""


@dataclass(frozen=True)
class SegmentCoding:
    """How one tissue is coded as a SEG segment and as an SR finding."""

    tissue: Tissue
    property_type: Code  # CID 7151 / CID 7166
    anatomic_region: Code | None  # qualifies the type (Anatomic Region Sequence)
    rgb: tuple[int, int, int]  # display colour (SEG Recommended Display CIELab, overlay fill)


SEGMENT_CODINGS: dict[Tissue, SegmentCoding] = {
    Tissue.SKELETAL_MUSCLE: SegmentCoding(Tissue.SKELETAL_MUSCLE, codes.SCT.SkeletalMuscle, None, (220, 40, 40)),
    Tissue.IMAT: SegmentCoding(Tissue.IMAT, codes.SCT.AdiposeTissue, codes.SCT.SkeletalMuscle, (40, 200, 40)),
    Tissue.VAT: SegmentCoding(Tissue.VAT, codes.SCT.AdiposeTissue, codes.SCT.AbdominalCavityStructure, (235, 215, 40)),
    Tissue.SAT: SegmentCoding(Tissue.SAT, codes.SCT.AdiposeTissue, codes.SCT.SubcutaneousTissue, (40, 210, 225)),
}

# --- algorithm identification ---------------------------------------------------------------

FAMILY_AI: Code = codes.DCM.ArtificialIntelligence  # DCM 123110, CID 7162
"""Algorithm family when a trained network produced the segmentation (CID 7162)."""
FAMILY_RULE_BASED: Code = codes.DCM.HistogramAnalysis  # DCM 123105, CID 7162
"""Algorithm family of the threshold + geometry fallback: HU-range thresholding is a histogram
analysis in CID 7162 terms (the closest member of that group)."""

# --- measurement report (SR, TID 1500) ------------------------------------------------------

PROCEDURE_REPORTED: Code = codes.SCT.ComputedTomography  # SCT 77477000, CID 100
REPORT_TITLE: Code = codes.DCM.ImagingMeasurementReport  # DCM 126000, CID 7021
DECLINED_REPORT_TITLE: Code = codes.LN.DiagnosticImagingReport  # LN 18748-4, CID 7000

AREA: Code = codes.SCT.Area  # SCT 42798000, TID 1411 row 11 via TID 300 (CID 7470 extensible)
ATTENUATION: Code = codes.DCM.AttenuationCoefficient  # DCM 112031, CID 7180
DERIVATION_MEAN: Code = codes.SCT.Mean  # SCT 373098007, CID 7464
DERIVATION_SD: Code = codes.SCT.StandardDeviation  # SCT 386136009, CID 7464
FINDING_SITE_L3: Code = codes.SCT.L3Vertebra  # SCT 36470004, TID 1419 Finding Site (CID 7151 anatomy)

NORMAL: Code = codes.SCT.Normal  # SCT 17621005, CID 222 Normality Codes
ABNORMALLY_LOW: Code = codes.SCT.AbnormallyLow  # SCT 371880002, CID 222
YES: Code = codes.SCT.Yes  # SCT 373066001, CID 230 Yes-No
NO: Code = codes.SCT.No  # SCT 373067005, CID 230
UNKNOWN: Code = codes.SCT.Unknown  # SCT 261665006
COMMENT: Code = codes.DCM.Comment  # DCM 121106, free-text notes

UNIT_CM2: Code = codes.UCUM.SquareCentimeter  # UCUM cm2, CID 7181
UNIT_HU: Code = codes.UCUM.HounsfieldUnit  # UCUM [hnsf'U], CID 7181
UNIT_CM2_PER_M2 = CodedConcept(value="cm2/m2", scheme_designator="UCUM", meaning="square centimeter per square meter")
UNIT_NONE: Code = codes.UCUM.NoUnits  # UCUM 1

# Private concepts: nothing in PS3.16, SNOMED CT or LOINC fits (checked against pydicom 3.0's tables).
SKELETAL_MUSCLE_INDEX = _private("L3N001", "Skeletal muscle index")
L3_CONFIDENCE = _private("L3N002", "L3 localization confidence")
L3_METHOD = _private("L3N003", "L3 localization method")
ANATOMIC_VARIANT = _private("L3N004", "Vertebral numbering variant")
NEEDS_REVIEW = _private("L3N005", "Needs review")
BODY_COMPOSITION_SUMMARY = _private("L3N006", "Body composition at L3")
ANALYSIS_DECLINED = _private("L3N007", "Body composition analysis declined")
DECLINED_REASON = _private("L3N008", "Reason analysis declined")
VARIANT_THORACOLUMBAR = _private("L3N011", "Thoracolumbar transitional anatomy")
VARIANT_LUMBOSACRAL = _private("L3N012", "Lumbosacral transitional anatomy")
VARIANT_NUMERIC = _private("L3N013", "Numeric variation of vertebrae")
VARIANT_COMBINED = _private("L3N014", "Combined vertebral variants")

PRIVATE_CODES: tuple[CodedConcept, ...] = (
    SKELETAL_MUSCLE_INDEX,
    L3_CONFIDENCE,
    L3_METHOD,
    ANATOMIC_VARIANT,
    NEEDS_REVIEW,
    BODY_COMPOSITION_SUMMARY,
    ANALYSIS_DECLINED,
    DECLINED_REASON,
    VARIANT_THORACOLUMBAR,
    VARIANT_LUMBOSACRAL,
    VARIANT_NUMERIC,
    VARIANT_COMBINED,
)

VARIANT_CODES: dict[Variant, Code | CodedConcept] = {
    Variant.NORMAL: NORMAL,
    Variant.THORACOLUMBAR: VARIANT_THORACOLUMBAR,
    Variant.LUMBOSACRAL: VARIANT_LUMBOSACRAL,
    Variant.NUMERIC: VARIANT_NUMERIC,
    Variant.COMBINED: VARIANT_COMBINED,
    Variant.UNKNOWN: UNKNOWN,
}
