"""Locate the inferior endplate of L3 (placeholder types; algorithm owned by issue 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
