"""Anatomic variants of the thoracolumbar and lumbosacral junctions, and what "L3" means in each.

Every phantom is built from a list of :class:`SegmentSpec`, one per vertebra from T1 down to
the sacrum. Names follow the **true segment count from the top** (C7 is followed by T1..T12),
never the appearance of a vertebra:

* the twelfth thoracic vertebra is always ``"T12"``, even when its rib is hypoplastic
  (< 38 mm) or absent;
* a vertebra below T12 is ``"L1"``, ``"L2"``, ... even when it carries a rudimentary rib
  (``l1_rib``) or is (partly) fused to the sacrum (``sacralization`` of ``"L5"``);
* the fused sacrum is one label named ``"sacrum"``; under ``lumbarization`` the first sacral
  segment is separated by a disc, labelled on its own and named ``"S1"`` (the rest stays
  ``"sacrum"``);
* numeric variants have 4 (``"L1".."L4"``) or 6 (``"L1".."L6"``) lumbar vertebrae with 12
  thoracic ones and no transitional vertebra.

**L3 definition used for the ground truth** (the paper's slice: inferior endplate of L3): L3 is
the third vertebra below T12, i.e. the third lumbar vertebra counted from the top, in every
variant. Consequences per variant:

============================  =================================================================
variant                       L3 is ...
============================  =================================================================
normal                        the 3rd of 5 lumbar vertebrae
t12_rib_hypoplasia/aplasia    the 3rd vertebra below the short/absent-rib T12 (not the 3rd
                              below the last *long* rib)
l1_rib                        the 2nd vertebra below the rudimentary-rib L1
sacralization                 the 3rd from the top; L5 is transitional (fused/enlarged TPs)
lumbarization                 the 3rd from the top; S1 looks like a 6th lumbar vertebra
four_lumbar / six_lumbar      the 3rd of 4 / of 6 lumbar vertebrae
combined                      the 3rd below T12 (components listed in ground truth)
============================  =================================================================

A counter that starts from the sacrum upwards gets a different vertebra in the lumbosacral and
numeric variants; one that starts from the last long rib gets a different vertebra in the
thoracolumbar ones. That is exactly what the variants are meant to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l3node.analysis.locate_l3 import Variant

VARIANTS: tuple[str, ...] = (
    "normal",
    "t12_rib_hypoplasia",
    "t12_rib_aplasia",
    "l1_rib",
    "sacralization",
    "lumbarization",
    "four_lumbar",
    "six_lumbar",
    "combined",
)

VARIANT_CLASS: dict[str, Variant] = {
    "normal": Variant.NORMAL,
    "t12_rib_hypoplasia": Variant.THORACOLUMBAR,
    "t12_rib_aplasia": Variant.THORACOLUMBAR,
    "l1_rib": Variant.THORACOLUMBAR,
    "sacralization": Variant.LUMBOSACRAL,
    "lumbarization": Variant.LUMBOSACRAL,
    "four_lumbar": Variant.NUMERIC,
    "six_lumbar": Variant.NUMERIC,
    "combined": Variant.COMBINED,
}

NORMAL_RIB_MIN_MM = 38.0
"""A rib of at least 3.8 cm counts as a normal rib (the paper's threshold)."""

_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("t12_rib_hypoplasia", "sacralization"),
    ("t12_rib_aplasia", "lumbarization"),
    ("l1_rib", "six_lumbar"),
    ("t12_rib_hypoplasia", "four_lumbar"),
    ("l1_rib", "sacralization"),
)


@dataclass(frozen=True)
class SegmentSpec:
    """One vertebra (or the fused sacrum) of the phantom, top to bottom.

    Attributes
    ----------
    name:
        ``"T1"`` .. ``"T12"``, ``"L1"`` .., ``"S1"`` (lumbarised only) or ``"sacrum"``.
    kind:
        ``"thoracic"``, ``"lumbar"``, ``"transitional"`` (sacralised L5 / lumbarised S1) or
        ``"sacrum"``.
    rib_length_mm:
        Length of the rib pair arising at this vertebra; 0 for none.
    tp_scale:
        Length factor of the transverse processes (1 = normal for the level).
    disc_below_mm:
        Height of the disc under this vertebra (0 = fused to the one below).
    """

    name: str
    kind: str
    rib_length_mm: float = 0.0
    tp_scale: float = 1.0
    disc_below_mm: float = 10.0


def variant_components(variant: str, rng: np.random.Generator) -> tuple[str, ...]:
    """The elementary variants that make up ``variant`` (two for ``"combined"``).

    Raises
    ------
    ValueError
        If ``variant`` is not one of :data:`VARIANTS`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "combined":
        return _COMBINATIONS[int(rng.integers(len(_COMBINATIONS)))]
    return (variant,)


def _rib_lengths(components: tuple[str, ...], rng: np.random.Generator) -> list[float]:
    """Rib lengths (mm) for T1..T12; realistic arcs, twelfth short but normal by default."""
    lengths = [210.0, 250.0, 290.0, 320.0, 340.0, 350.0, 350.0, 340.0, 320.0, 290.0, 190.0]
    lengths = [v * float(rng.uniform(0.92, 1.08)) for v in lengths]
    t12 = float(rng.uniform(60.0, 130.0))
    if "t12_rib_hypoplasia" in components:
        t12 = float(rng.uniform(15.0, 33.0))
    if "t12_rib_aplasia" in components:
        t12 = 0.0
    return lengths + [t12]


def plan_segments(components: tuple[str, ...], rng: np.random.Generator) -> list[SegmentSpec]:
    """Vertebrae from T1 to the sacrum for the given elementary variants."""
    ribs = _rib_lengths(components, rng)
    segments = [
        SegmentSpec(f"T{i + 1}", "thoracic", rib_length_mm=ribs[i], disc_below_mm=4.0 + 0.25 * i)
        for i in range(12)
    ]
    n_lumbar = 4 if "four_lumbar" in components else 6 if "six_lumbar" in components else 5
    for i in range(n_lumbar):
        rib = float(rng.uniform(12.0, 34.0)) if (i == 0 and "l1_rib" in components) else 0.0
        last = i == n_lumbar - 1
        if last and "sacralization" in components:
            # Castellvi-like: wide transverse processes abutting the sacral ala, thin disc.
            segments.append(SegmentSpec(f"L{i + 1}", "transitional", rib, tp_scale=1.9, disc_below_mm=2.5))
        else:
            segments.append(SegmentSpec(f"L{i + 1}", "lumbar", rib, disc_below_mm=9.0 + 0.5 * min(i, 3)))
    if "lumbarization" in components:
        segments.append(SegmentSpec("S1", "transitional", tp_scale=1.5, disc_below_mm=5.0))
    segments.append(SegmentSpec("sacrum", "sacrum", disc_below_mm=0.0))
    return segments
