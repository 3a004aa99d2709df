"""Locate the inferior endplate of L3 by counting vertebrae, as a radiologist does.

:func:`l3node.analysis.spine.analyse_spine` finds the vertebral bodies and discs, the ribs
with their lengths, the sacrum and the iliac crests. Here the vertebrae are *named*:

* **Counting from the ribs** (downward). T12 is the last vertebra with a normal rib
  (>= 38 mm, the L3SEG-net rule) -- unless that rib is as long as an eleventh rib
  (>= :data:`ELEVENTH_RIB_MIN_MM`; twelfth ribs are shorter), in which case it *is* T11 and the
  vertebra below is a T12 with a hypoplastic or absent rib. A short rib on the vertebra
  below a twelfth-rib-length T12 is a rudimentary L1 rib. L3 is the third vertebra below T12.
* **Counting from the sacrum** (upward). S1 is the first segment fused with the iliac wings;
  the mobile vertebra above it is taken as L5 and L3 is the third above the sacrum.

When both anchors are seen and agree, L3 is found with high confidence. When they disagree
the anatomy is classified (thoracolumbar: short/absent twelfth rib or a rib on L1;
lumbosacral: a transitional vertebra at the junction -- thin disc, large transverse
processes, or a long fused sacrum; numeric: 4 or 6 mobile lumbar vertebrae without one;
combined: more than one), both candidates are reported, and the configured convention
(:attr:`l3node.config.AnalysisConfig.variant_convention`) picks one, with status
``uncertain``. The L3 definition used for the phantoms' ground truth (third vertebra below
T12) is what ``count_from_ribs`` returns.

When neither anchor is seen, the iliac crest is taken to lie at L4 (the paper's assumption)
with low confidence; a column of fewer than :data:`MIN_COUNTABLE` vertebrae (a crop) is not
counted at all. When L3 is outside the scan, the answer is ``not_in_field_of_view`` with no
slice -- never an invented one: the counted L3 must have its inferior endplate, the disc
below it and the next vertebra inside the scan (:func:`_endplate_in_view`). The one
exception is a scan ending at L3's endplate: the lowest vertebra, as high as the bodies
above it, gets its slice with status ``uncertain`` (:func:`_endplate_at_edge`; the error is
then bounded by the 10 % height tolerance, ~3 mm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from l3node.analysis.spine import NORMAL_RIB_MIN_MM, SpineAnalysis, VertebraFound, analyse_spine
from l3node.analysis.spine_column import MIN_HALF_WIDTH_MM
from l3node.analysis.spine_pelvis import MAX_SEGMENT_HEIGHT_MM
from l3node.analysis.spine_ribs import CAGE_LEVEL_MAX_HEIGHT_MM
from l3node.analysis.volume import Volume
from l3node.config import AnalysisConfig
from l3node.logs import get_logger

log = get_logger(__name__)

ELEVENTH_RIB_MIN_MM = 185.0
"""A last normal rib this long (as measured: voxel path, ~15-30 % over the true arc) is an
eleventh rib; twelfth ribs are shorter (phantoms 60-130 mm, eleventh >= 175 mm)."""
SAME_RIB_RATIO = 0.8
"""A rib pair at least this fraction of the twelfth-rib pair above it is that rib measured
again from the level below (:func:`_runs_into_rib_above`)."""
CAGE_RIB_MIN_MM = 120.0
"""A rib this long (as measured) is certainly part of the thoracic cage; the walk down to
T12 starts at the first one (:func:`_read_ribs`)."""
CAGE_GAP_LEVELS = 3
"""Rib-less levels in a row that end the cage: a long "rib pair" below them is not thoracic."""
MIN_COUNTABLE = 3
"""Fewer mobile vertebrae than this (a crop) cannot be counted: a "rib" on the only vertebra
seen may be a transverse process, and nothing confirms it."""
MAX_COUNT_DISAGREEMENT = 2
"""Variants shift the count by one level, combined ones by two; more means a misread anchor."""
MIN_COUNTED_HEIGHT_MM = 10.0
"""A vertebra counted between the anchor and L3 (lumbar, measured 18-30 mm) is never this short."""
MAX_COUNTED_HEIGHT_MM = MAX_SEGMENT_HEIGHT_MM
"""... nor this tall (45 mm, the height :mod:`l3node.analysis.spine_pelvis` takes for pelvis, not
a vertebra): two bodies joined where their disc was missed. The rib anchor is checked too (the real
CT cut at 250 mm read T12 and L1 as one 59 mm "T12" and named L4 as L3)."""
THIN_DISC_RATIO = 0.6
"""A disc thinner than this fraction of the other lumbar discs marks a transitional level."""
SHALLOW_DISC_RATIO = 0.5
"""A disc whose trough in the body signal is shallower than this fraction of the other lumbar
discs' is a rudimentary disc, a sign of a transitional vertebra. The measured height of such
a disc is no guide: partial volume with the tilted endplates widens a thin trough. Phantom
seeds 50000-50029 (trough depth ratio of the disc above the sacrum): normal, 4 and 6 lumbar
0.59-1.42; lumbarised S1 0.30-0.76 and sacralised L5 0.10-0.74 where that disc is seen. The
ranges overlap, so this sign only names what is clearly shallower than any normal junction."""
LARGE_TP_RATIO = 1.4
"""Transverse processes this much larger than the other lumbar ones mark a transitional level
(bone volume beside the arch). Phantom seeds 50000-50039: normal, 4 and 6 lumbar junctions
<= 1.21 (one misread four-lumbar spine 1.56); lumbarised S1 and sacralised L5, where seen
apart from the sacrum, 1.06-4.74, all but 2 of 66 >= 1.4 (the old 1.6x + 0.5 cm^3 missed 8)."""
LARGE_TP_MIN_CM3 = 1.0
"""... and at least this much larger in volume (a ratio of small volumes is noise)."""
LONG_SACRUM_RATIO = 4.8
"""A fused sacrum longer than this many lumbar body heights has taken in L5 (sacralisation);
phantom seeds 2000-2009 measure normal <= 4.3, four-lumbar up to 4.55, sacralised >= 5.2."""


class L3Status(str, Enum):
    FOUND = "found"
    UNCERTAIN = "uncertain"
    NOT_IN_FIELD_OF_VIEW = "not_in_field_of_view"


class Variant(str, Enum):
    """Anatomic variant classes of the paper, plus 'unknown' when counting was impossible."""

    NORMAL = "normal"
    THORACOLUMBAR = "thoracolumbar"
    LUMBOSACRAL = "lumbosacral"
    NUMERIC = "numeric"
    COMBINED = "combined"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Vertebra:
    """One vertebra found in the scan."""

    name: str  # "T12", "L3", "S1", ...
    z_inferior_mm: float  # inferior endplate (patient z, LPS, +superior)
    z_superior_mm: float  # superior endplate
    rib_length_mm: float | None = None  # longest rib attached, if any


@dataclass(frozen=True)
class L3Location:
    """What the rest of the node uses from L3 location."""

    status: L3Status
    z_mm: float | None  # L3 inferior endplate; None when not found
    slice_index: int | None  # index k in the Volume nearest z_mm
    confidence: float  # 0..1
    variant: Variant
    method: str  # how it was found, for the report
    vertebrae: tuple[Vertebra, ...] = ()
    candidates_z_mm: tuple[float, ...] = ()  # other plausible L3 endplates (counting disagreement)
    notes: tuple[str, ...] = field(default=())
    rib_count_z_mm: float | None = None  # L3 endplate counted down from T12 (None if not possible)
    sacrum_count_z_mm: float | None = None  # L3 endplate counted up from the sacrum


@dataclass(frozen=True)
class _Reading:
    """The anatomy as read from the spine analysis (indices into ``vertebrae``, top first)."""

    t12: int | None
    sacrum: int | None
    thoracolumbar: str | None  # "t12_rib_hypoplasia" | "t12_rib_aplasia" | "l1_rib" | None
    lumbosacral: str | None  # "thin_disc" | "large_transverse_processes" | "long_sacrum" | None
    mobile_lumbar: int | None  # vertebrae between T12 and the sacrum


def _implausible_height(vs: tuple[VertebraFound, ...], anchor: int, chosen: int, from_ribs: bool) -> str | None:
    """Why the count from ``anchor`` to ``chosen`` cannot be trusted, or None.

    A counted "body" shorter than ``MIN_COUNTED_HEIGHT_MM`` is a body split by a false disc (or a
    crushed one); one taller than ``MAX_COUNTED_HEIGHT_MM`` is two bodies joined where their disc
    was missed, so every level counted past it is named one level too high. The tall check takes in
    a rib anchor too; a sacral anchor is tall by nature.
    """
    counted = range(anchor + 1, chosen + 1) if from_ribs else range(chosen, anchor)
    spanned = range(anchor, chosen + 1) if from_ribs else counted
    if any(vs[i].superior_seen and vs[i].inferior_seen and vs[i].height_mm < MIN_COUNTED_HEIGHT_MM
           for i in counted if 0 <= i < len(vs)):
        return "an implausibly short vertebra lies between the anchor and L3: the count is in doubt"
    if any(vs[i].height_mm > MAX_COUNTED_HEIGHT_MM for i in spanned if 0 <= i < len(vs)):
        return ("an implausibly tall vertebra (two bodies, a disc missed) lies between the anchor and L3: "
                "the count is in doubt")
    return None


def _read_ribs(vs: tuple[VertebraFound, ...]) -> tuple[int | None, str | None]:
    normal = [i for i, v in enumerate(vs) if not v.sacral and v.rib_mm >= NORMAL_RIB_MIN_MM]
    if not normal:
        return None, None
    # The cage is entered at its first unmistakable rib: short pieces higher up (first ribs,
    # ribs cut by the scan edge or half-detected) may be separated from the lower cage by
    # levels whose ribs were missed, and must not stop the walk down before the real cage.
    long_ribs = [i for i in normal if vs[i].rib_mm >= CAGE_RIB_MIN_MM]
    # A long rib with a partner on the other side is the cage itself: everything above the
    # lowest such pair is thoracic, however many ribs were missed up there.
    paired = [i for i in long_ribs if min(vs[i].rib_left_mm, vs[i].rib_right_mm) >= NORMAL_RIB_MIN_MM]
    # ... unless CAGE_GAP_LEVELS rib-less levels separate it from a long rib above: the cage is
    # contiguous, and a long "rib pair" below a run of lumbar levels is iliac bone beside the
    # lowest segments (phantom combined 2004 at 1 mm, back muscles fattier than the rest).
    paired = [i for i in paired if not _below_ribless_run(vs, i, long_ribs)]
    start = paired[-1] if paired else long_ribs[0] if long_ribs else normal[0]
    # Long ribs are unmistakably the cage: the walk goes through them even across two
    # levels whose ribs were missed or seen on one side only (thick slices).
    for i in [j for j in long_ribs if j > start]:
        if i > start + 3:
            break
        start = i
    # The rib cage is contiguous from above: a "rib" two or more rib-less levels below the
    # cage (vessel, organ, transverse process) is not counted; one level may have lost its
    # rib to the measurement (a missed detection, or a twelfth-rib aplasia above a T12).
    last = start
    for i in [j for j in normal if j > start]:
        if i > last + 2:
            break
        if i == last + 2 and min(vs[i].rib_left_mm, vs[i].rib_right_mm) < NORMAL_RIB_MIN_MM:
            break  # across a rib-less level only a bilateral rib pair continues the cage
        last = i
    if last >= 1 and last - 1 >= start and _runs_into_rib_above(vs[last], vs[last - 1]):
        # An L1 stub measured along the twelfth rib: the level above is T12.
        return last - 1, "l1_rib"
    below = vs[last + 1] if last + 1 < len(vs) and not vs[last + 1].sacral else None
    sides = (vs[last].rib_left_mm, vs[last].rib_right_mm)
    if _shorter_seen_side(vs[last]) >= ELEVENTH_RIB_MIN_MM:
        if below is None:
            return last + 1, None
        return last + 1, "t12_rib_hypoplasia" if below.rib_mm > 0 else "t12_rib_aplasia"
    if min(sides) > 0 and min(sides) < NORMAL_RIB_MIN_MM and max(sides) < CAGE_RIB_MIN_MM:
        # Both twelfth ribs seen, one short: a stub's measurement may run on into the
        # eleventh rib passing beside it (phantoms: 15-32 mm stubs measured 28-30 and
        # 52-55 mm), never the other way round, so the shorter side decides.
        above = vs[last - 1] if last >= 1 else None
        if above is not None and NORMAL_RIB_MIN_MM <= min(above.rib_left_mm, above.rib_right_mm) < ELEVENTH_RIB_MIN_MM:
            # ... and when the level above carries a pair of twelfth-rib length, the stub is
            # a rudimentary L1 rib whose measurement ran on into the twelfth rib.
            return last - 1, "l1_rib"
        return last, "t12_rib_hypoplasia"
    if below is not None and below.rib_mm > 0:
        after = vs[last + 2] if last + 2 < len(vs) else None
        if after is not None and not after.sacral and after.rib_mm > 0:
            # Short "ribs" on two lumbar levels: transverse processes or artefact, not a
            # rudimentary rib (which only L1 carries).
            return last, None
        return last, "l1_rib"
    return last, None


def _below_ribless_run(vs: tuple[VertebraFound, ...], i: int, long_ribs: list[int]) -> bool:
    """True when a long rib lies above level ``i`` with ``CAGE_GAP_LEVELS`` rib-less levels in a row between."""
    higher = [j for j in long_ribs if j < i]
    if not higher:
        return False
    run = 0
    for k in range(higher[-1] + 1, i):
        run = run + 1 if vs[k].rib_mm == 0 else 0
        if run >= CAGE_GAP_LEVELS:
            return True
    return False


def _runs_into_rib_above(v: VertebraFound, above: VertebraFound) -> bool:
    """True when the rib pair of ``v`` is nearly as long as the twelfth-rib-length pair above.

    Ribs shorten fast below the tenth (eleventh ~190 mm, twelfth 60-130 mm), so two adjacent
    pairs of about the same length under the eleventh rib are one rib seen twice: a
    rudimentary L1 rib (or transverse process) whose measurement ran on along the twelfth rib
    to the same tip (phantoms: 13-28 mm stubs measured 63-110 mm, 80-90 % of the twelfth).
    """
    if v.rib_mm <= 0 or min(above.rib_left_mm, above.rib_right_mm) < NORMAL_RIB_MIN_MM:
        return False
    upper = max(above.rib_left_mm, above.rib_right_mm)
    return upper < ELEVENTH_RIB_MIN_MM and _shorter_seen_side(v) >= SAME_RIB_RATIO * upper


def _shorter_seen_side(v: VertebraFound) -> float:
    """The rib length of ``v`` to trust: the shorter side when both are seen.

    A rib's measurement may run on into the rib above (thick slices, through the
    transverse process), which makes that side longer, never shorter.
    """
    return min(v.rib_left_mm, v.rib_right_mm) or v.rib_mm


def _read_junction(vs: tuple[VertebraFound, ...], t12: int | None, sacrum: int) -> str | None:
    """Transitional signs at the lumbosacral junction (the segment just above the sacrum)."""
    if sacrum < 1:
        return None
    top = (t12 + 1) if t12 is not None else max(0, sacrum - 5)
    lumbar = [v for v in vs[top:sacrum] if not v.sacral and v.inferior_seen and v.superior_seen]
    if len(lumbar) < 3:
        return None
    last, others = lumbar[-1], lumbar[:-1]
    discs = [v.disc_below_mm for v in others if v.disc_below_mm > 0]
    if discs and last.disc_below_mm < THIN_DISC_RATIO * float(np.median(discs)):
        return "thin_disc"
    depths = [v.disc_below_depth_hu for v in others if v.disc_below_depth_hu > 0]
    if depths and 0 < last.disc_below_depth_hu < SHALLOW_DISC_RATIO * float(np.median(depths)):
        return "thin_disc"
    tps = [v.tp_volume_cm3 for v in others]
    tp_norm = float(np.median(tps)) if tps else 0.0
    if tps and last.tp_volume_cm3 > max(LARGE_TP_RATIO * tp_norm, tp_norm + LARGE_TP_MIN_CM3):
        return "large_transverse_processes"
    return None


def read_anatomy(spine: SpineAnalysis) -> _Reading:
    """Name the anchors (T12, sacrum) and the signs of each variant class."""
    vs = spine.vertebrae
    if sum(not v.sacral for v in vs) < MIN_COUNTABLE:
        return _Reading(None, None, None, None, None)
    t12, thoracolumbar = _read_ribs(vs)
    sacral = [i for i, v in enumerate(vs) if v.sacral]
    sacrum = sacral[0] if sacral else None
    lumbosacral = None
    mobile = None
    if sacrum is not None:
        lumbosacral = _read_junction(vs, t12, sacrum)
        heights = [v.height_mm for v in vs[:sacrum] if v.inferior_seen and v.superior_seen][-5:]
        length = spine.sacrum_length_mm
        if lumbosacral is None and length and heights and length > LONG_SACRUM_RATIO * float(np.median(heights)):
            lumbosacral = "long_sacrum"
        if t12 is not None and t12 < sacrum:
            mobile = sacrum - t12 - 1
    return _Reading(t12, sacrum, thoracolumbar, lumbosacral, mobile)


DOUBTFUL_RIB_MM = 60.0
"""A one-sided "rib" shorter than this on the last rib-bearing level may be a rudimentary L1
rib or bowel contrast beside L1 measured long (short ribs are measured 2-4x their length)."""


def _resolve_doubtful_last_rib(vs: tuple[VertebraFound, ...], r: _Reading, notes: list[str]) -> _Reading:
    """Let the sacrum decide a doubtful twelfth rib.

    When the last rib-bearing level carries a short rib on one side only, the level above
    also has a rib, no lumbosacral transitional sign is seen, and counting up from the
    sacrum puts T12 exactly one level higher, that short rib is read as a rudimentary L1
    rib: the two counts then agree. Without the sacrum nothing is changed.
    """
    if r.t12 is None or r.sacrum is None or r.lumbosacral is not None or r.t12 < 1:
        return r
    last, above = vs[r.t12], vs[r.t12 - 1]
    one_sided = min(last.rib_left_mm, last.rib_right_mm) == 0 and 0 < last.rib_mm < DOUBTFUL_RIB_MM
    if not one_sided or above.rib_mm <= 0 or r.mobile_lumbar != 4:
        return r
    notes.append("a short one-sided rib on the last rib-bearing level, with the sacrum count one level "
                 "higher: read as a rudimentary L1 rib")
    return _Reading(r.t12 - 1, r.sacrum, "l1_rib", r.lumbosacral, 5)


def _classify(r: _Reading) -> Variant:
    if r.t12 is None or r.sacrum is None:
        return Variant.THORACOLUMBAR if r.thoracolumbar else Variant.UNKNOWN
    flags = [r.thoracolumbar is not None, r.lumbosacral is not None,
             r.lumbosacral is None and r.mobile_lumbar not in (None, 5)]
    if sum(flags) == 0:
        return Variant.NORMAL
    if sum(flags) > 1:
        return Variant.COMBINED
    return (Variant.THORACOLUMBAR, Variant.LUMBOSACRAL, Variant.NUMERIC)[flags.index(True)]


def _names(vs: tuple[VertebraFound, ...], anchor: int, anchor_is_t12: bool) -> list[str]:
    names = []
    for i, v in enumerate(vs):
        if v.sacral:
            names.append("S1" if i == anchor and not anchor_is_t12 else "sacrum")
            continue
        d = i - anchor if anchor_is_t12 else None
        if d is None:
            up = anchor - i  # 1 = the vertebra just above the sacrum = L5
            d = 6 - up
        names.append(f"T{12 + d}" if d <= 0 else f"L{d}")
    return [n if not n.startswith("T") or int(n[1:]) >= 1 else "C" + str(7 + int(n[1:])) for n in names]


def _endplate(vs: tuple[VertebraFound, ...], i: int | None) -> float | None:
    if i is None or not 0 <= i < len(vs) or vs[i].sacral:
        return None
    return vs[i].z_inferior_mm


def locate_l3(volume: Volume, config: AnalysisConfig | None = None) -> L3Location:
    """Find the L3 inferior endplate in ``volume`` (see module docstring).

    Parameters
    ----------
    volume:
        The CT in the package convention (:mod:`l3node.analysis.volume`).
    config:
        Analysis settings; ``variant_convention`` chooses between the rib and sacrum counts
        when they disagree. Defaults to :class:`AnalysisConfig()`.

    Returns
    -------
    L3Location
        ``not_in_field_of_view`` (no slice) when L3's inferior endplate is outside the scan;
        ``uncertain`` when the counts disagree or only a weak anchor was available.

    Raises
    ------
    ValueError
        If ``volume`` is not 3-D.
    """
    if volume.hu.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.hu.shape}")
    config = config or AnalysisConfig()
    start = time.perf_counter()
    spine = analyse_spine(volume)
    result = _decide(volume, spine, config)
    log.debug("l3_decided", status=result.status.value, variant=result.variant.value,
              vertebrae=len(spine.vertebrae), elapsed_s=round(time.perf_counter() - start, 3))
    return result


def _decide(volume: Volume, spine: SpineAnalysis, config: AnalysisConfig) -> L3Location:
    vs = spine.vertebrae
    notes = list(spine.notes)
    if not vs:
        return L3Location(L3Status.NOT_IN_FIELD_OF_VIEW, None, None, 0.9, Variant.UNKNOWN,
                          "no vertebral column found in the scan", notes=tuple(notes))
    r = read_anatomy(spine)
    r = _resolve_doubtful_last_rib(vs, r, notes)
    variant = _classify(r)
    rib_i = r.t12 + 3 if r.t12 is not None else None
    sac_i = r.sacrum - 3 if r.sacrum is not None else None
    rib_z, sac_z = _endplate(vs, rib_i), _endplate(vs, sac_i)
    if r.thoracolumbar:
        notes.append(f"thoracolumbar sign: {r.thoracolumbar.replace('_', ' ')}")
    if r.lumbosacral:
        notes.append(f"lumbosacral transitional sign: {r.lumbosacral.replace('_', ' ')}")
    if r.mobile_lumbar is not None:
        notes.append(f"{r.mobile_lumbar} mobile vertebrae between T12 and the sacrum")

    if rib_i is not None and sac_i is not None:
        if rib_i == sac_i:
            chosen, anchor, from_ribs = rib_i, r.t12, True
            status = L3Status.FOUND
            confidence = 0.95 if variant is Variant.NORMAL else 0.85
            method = "counted down from T12 (ribs) and up from the sacrum: agree"
        elif abs(rib_i - sac_i) > MAX_COUNT_DISAGREEMENT:
            # No anatomy puts T12 and the sacrum that far apart: one anchor is misread.
            notes.append(f"rib and sacrum counts disagree by {abs(rib_i - sac_i)} vertebrae: an anchor is misread")
            return _unidentified("rib and sacrum counts irreconcilable", 0.1, variant,
                                 _named(vs, r.t12, True), notes, rib_z, sac_z)
        else:
            from_ribs = config.variant_convention == "count_from_ribs"
            chosen, anchor = (rib_i, r.t12) if from_ribs else (sac_i, r.sacrum)
            status = L3Status.UNCERTAIN
            confidence = 0.5
            method = (f"rib and sacrum counts disagree by {abs(rib_i - sac_i)} vertebra(e); "
                      f"{config.variant_convention.replace('_', ' ')} chosen by configuration")
    elif rib_i is not None:
        chosen, anchor, from_ribs = rib_i, r.t12, True
        status, confidence = L3Status.FOUND, 0.75 if variant is Variant.UNKNOWN else 0.7
        method = "counted down from T12 (last rib-bearing vertebra); sacrum not in view"
    elif sac_i is not None:
        chosen, anchor, from_ribs = sac_i, r.sacrum, False
        status, confidence = L3Status.FOUND, 0.65
        method = "counted up from the sacrum; twelfth rib not in view"
    else:
        return _without_anchor(volume, spine, notes)

    vertebrae = _named(vs, anchor, from_ribs)
    candidates = tuple(z for z in (rib_z, sac_z) if z is not None)
    if not 0 <= chosen < len(vs):
        return _outside(volume, spine, chosen, method, variant, vertebrae, notes, rib_z, sac_z)
    v = vs[chosen]
    agree = rib_i is not None and rib_i == sac_i
    misplaced = _ribbed_lumbar(vs, anchor) if from_ribs and not agree else []
    if misplaced:
        # A vertebra counted as lumbar carries a rib-cage rib, or a vertebra counted as L2
        # or lower a pair of normal ribs: unless the sacrum count confirms the count (then
        # the "rib" is bowel contrast or a kidney), the ribs were missed or misread above,
        # so naming a slice would be a guess.
        notes.append("a vertebra counted as lumbar carries ribs: the rib count is inconsistent")
        if _below_every_reading(volume, vs, max(misplaced) + 3):
            return _outside(volume, spine, len(vs), method + "; even counted from the lowest rib-bearing level",
                            variant, vertebrae, notes, rib_z, sac_z)
        return _unidentified(method + "; count inconsistent", min(confidence, 0.2), variant, vertebrae, notes,
                             rib_z, sac_z)
    if v.sacral:
        return _outside(volume, spine, chosen, method, variant, vertebrae, notes, rib_z, sac_z)
    doubt = _implausible_height(vs, anchor, chosen, from_ribs)
    if doubt:
        notes.append(doubt)
        return _unidentified(method + "; count in doubt", min(confidence, 0.2), variant, vertebrae, notes,
                             rib_z, sac_z)
    z = v.z_inferior_mm
    if not _endplate_in_view(volume, vs, chosen):
        if not _endplate_at_edge(volume, vs, chosen):
            notes.append("L3 inferior endplate or the disc below it is not fully inside the scan")
            return _outside(volume, spine, len(vs), method, variant, vertebrae, notes, rib_z, sac_z)
        notes.append("L3 is the lowest vertebra: its endplate is at the scan edge, no disc seen below")
        status, confidence = L3Status.UNCERTAIN, min(confidence, 0.4)
        # The working grid blurs the last millimetres of bone: an endplate measured just
        # below the last slice is at that slice.
        z = max(z, float(min(volume.z_mm[0], volume.z_mm[-1])))
    if 0 < v.half_width_mm <= MIN_HALF_WIDTH_MM:  # 0: width not measured
        # No body where "L3" was sampled: the canal track has left the column there, and the
        # cuts between its "vertebrae" are not endplates. The level is counted, not located.
        notes.append("no vertebral body measured at the L3 level: the column may be mis-tracked there")
        return _unidentified(method + "; L3 counted, its endplate not measured", min(confidence, 0.3), variant, vertebrae,
                             notes, rib_z, sac_z)
    if not volume.contains_z(z):
        return _outside(volume, spine, chosen, method, variant, vertebrae, notes, rib_z, sac_z)
    k = volume.slice_index_at(z)
    return L3Location(status, float(z), k, confidence, variant, method, vertebrae, candidates, tuple(notes),
                      rib_z, sac_z)


def _ribbed_lumbar(vs: tuple[VertebraFound, ...], t12: int) -> list[int]:
    """Levels counted below ``t12`` that cannot be lumbar: a rib-cage rib, or a normal rib on
    both sides from L2 down (only L1 may carry a rib, and a rudimentary one). Merged pelvic
    segments (too tall for a body) are not judged."""
    out = []
    for i in range(t12 + 1, len(vs)):
        v = vs[i]
        if v.sacral or v.height_mm > CAGE_LEVEL_MAX_HEIGHT_MM:
            continue
        if v.rib_mm >= CAGE_RIB_MIN_MM:
            out.append(i)
        elif i >= t12 + 2 and min(v.rib_left_mm, v.rib_right_mm) >= NORMAL_RIB_MIN_MM:
            out.append(i)
    return out


LAST_LEVEL_REACH_MM = 45.0
"""The lowest vertebra found ends this close to the scan's bottom when the column was followed
to the end (a body plus a disc, ~35 mm, fits in the rest otherwise)."""


def _below_every_reading(volume: Volume, vs: tuple[VertebraFound, ...], earliest_l3: int) -> bool:
    """True when even the lowest possible L3 (``earliest_l3``) lies below the last vertebra
    found *and* that vertebra reaches the scan's bottom: however the ribs are read, L3 is
    below the scan (chest scans whose ribs were partly missed)."""
    if earliest_l3 < len(vs):
        return False
    z_bottom = float(min(volume.z_mm[0], volume.z_mm[-1]))
    return vs[-1].z_inferior_mm - z_bottom <= LAST_LEVEL_REACH_MM


FOV_MARGIN_MM = 5.0
"""The disc below L3 must end at least this far inside the scan for the endplate to count."""


def _endplate_in_view(volume: Volume, vs: tuple[VertebraFound, ...], i: int) -> bool:
    """True when vertebra ``i``'s inferior endplate *and* the disc under it lie inside the scan.

    A body cut by the scan edge, or the lowest vertebra found with nothing seen below it, has
    no endplate to measure at: answering with a slice there would be a made-up level.
    """
    v = vs[i]
    if not v.inferior_seen or v.disc_below_mm <= 0:
        return False
    z_bottom = float(min(volume.z_mm[0], volume.z_mm[-1]))
    disc_bottom = v.z_inferior_mm - v.disc_below_mm
    return i + 1 < len(vs) and disc_bottom >= z_bottom + FOV_MARGIN_MM


EDGE_HEIGHT_RATIO = 0.9
"""The lowest vertebra's endplate is believed only if it is this high relative to the bodies above."""


def _endplate_at_edge(volume: Volume, vs: tuple[VertebraFound, ...], i: int) -> bool:
    """True when vertebra ``i`` is the lowest found and as high as the bodies above it.

    A scan may end exactly at L3's endplate: the body then touches the scan edge with no disc
    below. If the scan had cut L3 instead, the body would look short; a body (measured down
    to the scan edge) at least :data:`EDGE_HEIGHT_RATIO` of the median of up to three whole
    bodies above puts its true endplate within ~3 mm of the scan edge, so the answer is a
    real (if uncertain) level, not a made-up one.
    """
    v = vs[i]
    if i + 1 != len(vs) or i < 1 or v.sacral or not v.superior_seen:
        return False
    # Up to three whole bodies above: one measured height is noisy (+-15 %), and lumbar
    # bodies grow slowly downward, so their median is a fair floor for L3's height.
    above = [u.height_mm for u in vs[max(0, i - 3) : i]
             if u.superior_seen and u.inferior_seen and not u.sacral]
    if not above:
        return False
    # A body reaching the scan's bottom is measured down to the edge of the scan itself: the
    # working grid's last block blurs the last millimetres of bone.
    z_bottom = float(min(volume.z_mm[0], volume.z_mm[-1])) - volume.spacing_mm[0] / 2
    # Thick slices place the measured endplate up to a slice above the true one.
    if v.inferior_seen and v.z_inferior_mm - z_bottom >= FOV_MARGIN_MM + volume.spacing_mm[0]:
        # The endplate is well inside the scan and yet nothing was found below it: the count
        # itself is in doubt (a missed or merged level), not the scan edge.
        return False
    height = max(v.height_mm, v.z_superior_mm - z_bottom)
    return height >= EDGE_HEIGHT_RATIO * float(np.median(above))


def _named(vs: tuple[VertebraFound, ...], anchor: int, anchor_is_t12: bool) -> tuple[Vertebra, ...]:
    """The vertebrae found, named by counting from ``anchor`` (see :func:`_names`)."""
    return tuple(Vertebra(n, v.z_inferior_mm, v.z_superior_mm, v.rib_mm or None)
                 for n, v in zip(_names(vs, anchor, anchor_is_t12), vs))


def _unidentified(method: str, confidence: float, variant: Variant, vertebrae: tuple[Vertebra, ...],
                  notes: list[str], rib_z: float | None, sac_z: float | None) -> L3Location:
    """L3 counted (or the count in doubt) but no slice named: status ``uncertain``."""
    return L3Location(L3Status.UNCERTAIN, None, None, confidence, variant, method + ", L3 not identified",
                      vertebrae, (), tuple(notes), rib_z, sac_z)


def _outside(volume: Volume, spine: SpineAnalysis, chosen: int, method: str, variant: Variant,
             vertebrae: tuple[Vertebra, ...], notes: list[str], rib_z: float | None,
             sac_z: float | None) -> L3Location:
    where = "above the scan" if chosen < 0 else "below the scan"
    return L3Location(L3Status.NOT_IN_FIELD_OF_VIEW, None, None, 0.8, variant,
                      f"{method}; L3 inferior endplate lies {where}", vertebrae, (), tuple(notes), rib_z, sac_z)


def _without_anchor(volume: Volume, spine: SpineAnalysis, notes: list[str]) -> L3Location:
    """Neither twelfth rib nor sacrum: iliac crest taken at L4 (paper's assumption), low confidence."""
    vs = spine.vertebrae
    crest = spine.iliac_crest_z_mm
    vertebrae = tuple(Vertebra(f"V{i + 1}", v.z_inferior_mm, v.z_superior_mm, v.rib_mm or None)
                      for i, v in enumerate(vs))
    if crest is None:
        notes.append("no twelfth rib, sacrum or iliac crest in view: vertebrae cannot be named")
        return L3Location(L3Status.UNCERTAIN, None, None, 0.0, Variant.UNKNOWN,
                          "no counting anchor in the scan", vertebrae, (), tuple(notes))
    centres = np.array([(v.z_inferior_mm + v.z_superior_mm) / 2 for v in vs])
    l4 = int(np.argmin(np.abs(centres - crest)))
    l3 = l4 - 1
    notes.append("no counting anchor: iliac crest assumed at L4 (L3SEG-net assumption)")
    if l3 < 0 or vs[l3].sacral or not _endplate_in_view(volume, vs, l3) or not volume.contains_z(vs[l3].z_inferior_mm):
        return L3Location(L3Status.NOT_IN_FIELD_OF_VIEW, None, None, 0.3, Variant.UNKNOWN,
                          "iliac crest taken at L4; the vertebra above is not in view", vertebrae, (), tuple(notes))
    z = vs[l3].z_inferior_mm
    return L3Location(L3Status.UNCERTAIN, float(z), volume.slice_index_at(z), 0.3, Variant.UNKNOWN,
                      "iliac crest taken at L4 (no rib or sacrum anchor)", vertebrae, (z,), tuple(notes))


def inferior_endplate_z_from_labels(vertebra_labels: np.ndarray, volume: Volume, label: int,
                                    body_mask: np.ndarray | None = None) -> float:
    """Inferior endplate z (mm) of vertebra ``label`` in a label map on ``volume``'s grid.

    The endplate is the **lower boundary** of the lowest slice holding the vertebral body:
    ``z(k_min) - dz / 2``, matching the reference in ``shared/data`` (L3 of ts_example_ct:
    body from k = 69, endplate 299.8 mm = 94.30 + 3 * 68.5). Posterior elements hang lower
    than the body, so they are excluded: with ``body_mask`` (e.g. TotalSegmentator's
    vertebral bodies, TPTBox subregion 49) by intersection, otherwise by keeping the
    anterior 40 % of the vertebra's anterior-posterior extent (the body).

    Raises
    ------
    ValueError
        If the shapes differ or ``label`` is absent.
    """
    if vertebra_labels.shape != volume.hu.shape:
        raise ValueError(f"label map {vertebra_labels.shape} does not match volume {volume.hu.shape}")
    mask = vertebra_labels == label
    if not mask.any():
        raise ValueError(f"label {label} is not in the label map")
    if body_mask is not None:
        body = mask & body_mask.astype(bool)
        if not body.any():
            raise ValueError(f"label {label} has no voxel inside the body mask")
    else:
        rows = np.nonzero(mask.any(axis=(0, 2)))[0]
        cut = rows.min() + 0.4 * (rows.max() - rows.min() + 1)
        body = mask.copy()
        body[:, int(np.ceil(cut)) :, :] = False
    k_min = int(np.nonzero(body.any(axis=(1, 2)))[0].min())
    return float(volume.z_mm[k_min] - volume.spacing_mm[0] / 2)
