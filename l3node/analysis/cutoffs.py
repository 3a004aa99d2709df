"""Published cut-offs for low muscle mass (SMI) and low muscle attenuation at L3.

Each set is data: rules ``(sex, BMI interval) -> threshold``; a value is flagged
when it lies *strictly below* the threshold. BMI intervals are half-open,
``[bmi_min, bmi_max)`` (so BMI 25.0 falls in "BMI >= 25").

* ``martin2013`` -- Martin L. et al., J Clin Oncol 2013;31:1539-47. SMI (cm²/m²):
  men < 43 (BMI < 25) or < 53 (BMI >= 25); women < 41. Muscle attenuation (HU):
  < 41 (BMI < 25) or < 33 (BMI >= 25), both sexes.
* ``prado2008`` -- Prado C.M. et al., Lancet Oncol 2008;9:629-35. SMI men < 52.4,
  women < 38.5; no attenuation cut-off.
* ``asian`` -- SMI men < 40.31, women < 30.88 (a set used in East-Asian cohorts; some
  sites use 40.8 / 34.9 instead, see ``ASIAN_ALTERNATIVE``); no attenuation cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass

_ANY = (None, None)


@dataclass(frozen=True)
class Cutoff:
    """One threshold chosen for a patient; the measurement is low when below it."""

    value: float
    # Human-readable, for the report: "Martin 2013, male, BMI >= 25: SMI < 53 cm2/m2".
    # ASCII only: it is burned into the overlay (PIL's default font) and written to the SR.
    rule: str


@dataclass(frozen=True)
class CutoffSet:
    """A published set of thresholds."""

    name: str
    citation: str
    smi: dict[str, tuple[tuple[float | None, float | None, float], ...]]  # sex -> (bmi_min, bmi_max, cm²/m²)
    attenuation: tuple[tuple[float | None, float | None, float], ...]  # (bmi_min, bmi_max, HU), both sexes


CUTOFF_SETS: dict[str, CutoffSet] = {
    "martin2013": CutoffSet(
        name="martin2013",
        citation="Martin 2013",
        smi={"M": ((None, 25.0, 43.0), (25.0, None, 53.0)), "F": ((None, None, 41.0),)},
        attenuation=((None, 25.0, 41.0), (25.0, None, 33.0)),
    ),
    "prado2008": CutoffSet(
        name="prado2008",
        citation="Prado 2008",
        smi={"M": ((None, None, 52.4),), "F": ((None, None, 38.5),)},
        attenuation=(),
    ),
    "asian": CutoffSet(
        name="asian",
        citation="Asian cut-offs",
        smi={"M": ((None, None, 40.31),), "F": ((None, None, 30.88),)},
        attenuation=(),
    ),
}

ASIAN_ALTERNATIVE: dict[str, float] = {"M": 40.8, "F": 34.9}
"""The other SMI pair in use in East-Asian cohorts (cm²/m²), for sites that configure it."""

_SEX_WORD = {"M": "male", "F": "female"}


class CutoffNotApplicable(Exception):
    """The cut-off cannot be chosen; ``str(exc)`` says which input is missing."""


def get_cutoff_set(name: str) -> CutoffSet:
    """The cut-off set called ``name``.

    Raises
    ------
    ValueError
        If no such set exists.
    """
    try:
        return CUTOFF_SETS[name]
    except KeyError:
        raise ValueError(f"unknown cut-off set {name!r}; choose one of {', '.join(CUTOFF_SETS)}") from None


def smi_cutoff(name: str, sex: str | None, bmi: float | None) -> Cutoff:
    """The SMI threshold (cm²/m²) for this patient.

    Raises
    ------
    CutoffNotApplicable
        If sex is missing or not M/F, or the set needs BMI for this sex and it is missing.
    ValueError
        If ``name`` is not a known set.
    """
    cutoff_set = get_cutoff_set(name)
    if sex is None:
        raise CutoffNotApplicable("PatientSex missing")
    if sex not in cutoff_set.smi:
        raise CutoffNotApplicable(f"PatientSex {sex!r} has no cut-off in {cutoff_set.citation}")
    rules = cutoff_set.smi[sex]
    value, bmi_text = _pick(rules, bmi)
    return Cutoff(value, f"{cutoff_set.citation}, {_SEX_WORD[sex]}{bmi_text}: SMI < {value:g} cm2/m2")


def attenuation_cutoff(name: str, bmi: float | None) -> Cutoff:
    """The skeletal-muscle mean-HU threshold for this patient.

    Raises
    ------
    CutoffNotApplicable
        If the set has no attenuation cut-off, or BMI is needed and missing.
    ValueError
        If ``name`` is not a known set.
    """
    cutoff_set = get_cutoff_set(name)
    if not cutoff_set.attenuation:
        raise CutoffNotApplicable(f"{cutoff_set.citation} defines no muscle-attenuation cut-off")
    value, bmi_text = _pick(cutoff_set.attenuation, bmi)
    return Cutoff(value, f"{cutoff_set.citation}{bmi_text}: muscle attenuation < {value:g} HU")


def _pick(rules: tuple[tuple[float | None, float | None, float], ...], bmi: float | None) -> tuple[float, str]:
    if len(rules) == 1 and rules[0][:2] == _ANY:
        return rules[0][2], ""
    if bmi is None:
        raise CutoffNotApplicable("BMI unknown (PatientSize or PatientWeight missing)")
    for low, high, value in rules:
        if (low is None or bmi >= low) and (high is None or bmi < high):
            text = f", BMI < {high:g}" if low is None else f", BMI >= {low:g}" if high is None else f", BMI {low:g}-{high:g}"
            return value, text
    raise CutoffNotApplicable(f"no rule for BMI {bmi:.1f}")
