"""Assemble a phantom slice by slice and measure its exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from l3node.analysis.volume import Volume
from l3node.phantom import acquisition as acq_mod
from l3node.phantom.anatomy import Spine, layout_spine
from l3node.phantom.body import adjust_habitus, build_torso, random_habitus
from l3node.phantom.materials import COMPARTMENT_NAMES, COMPARTMENT_OF_STRUCTURE, STRUCTURE_NAMES
from l3node.phantom.organs import build_viscera
from l3node.phantom.pelvis import build_pelvis
from l3node.phantom.render import Scene, render_volume
from l3node.phantom.ribs import build_rib_cage
from l3node.phantom.truth import ground_truth, tissues_from_hu
from l3node.phantom.variants import plan_segments, variant_components

log = structlog.get_logger(__name__)

_PATIENT_OPTIONS = ("sex", "height_m", "bmi", "age_years", "muscle_factor")


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT with exactly known anatomy.

    Attributes
    ----------
    volume:
        HU volume in the package convention (see :mod:`l3node.analysis.volume`).
    vertebra_labels:
        uint8, same shape; each vertebra's bone (body and posterior elements, not the disc or
        canal) carries its label; names in ``vertebra_names``.
    vertebra_names:
        label -> name, top to bottom (``"T1"``.. ``"L5"``, ``"S1"`` only when lumbarised,
        ``"sacrum"``); see :mod:`l3node.phantom.variants` for the naming rules.
    tissue_labels:
        uint8 :class:`~l3node.analysis.tissues.Tissue` values (1 muscle, 2 IMAT, 3 VAT, 4 SAT),
        0 elsewhere, by the paper's definition: the compartment (``compartment_labels``)
        thresholded on the FINAL image ``volume.hu`` (muscle compartment with HU -29..150 is
        muscle, with -190..-30 IMAT; visceral / subcutaneous compartment with -190..-30 is
        VAT / SAT; ranges from :class:`l3node.config.AnalysisConfig`). Arm muscle and fat are 0,
        as the paper excludes arms.
    ground_truth, patient, acquisition:
        JSON-ready dicts (see :func:`make_phantom`).
    structure_labels:
        uint8 structure map (finer codes, names in ``structure_names``).
    body_disc_labels:
        uint8, 1 = vertebral body (incl. sacral body), 2 = intervertebral disc, like
        TotalSegmentator's ``vertebral_bodies_and_discs``; with ``vertebra_labels`` it gives
        body-only extents (the posterior elements of a vertebra reach below its body).
    compartment_labels:
        uint8 :class:`~l3node.phantom.materials.Compartment` values (1 muscle, 2 visceral,
        3 subcutaneous), exact geometry independent of noise; names in ``compartment_names``.
    """

    volume: Volume
    vertebra_labels: np.ndarray
    vertebra_names: dict[int, str]
    tissue_labels: np.ndarray
    ground_truth: dict
    patient: dict
    acquisition: dict
    structure_labels: np.ndarray | None = None
    structure_names: dict[int, str] = field(default_factory=lambda: dict(STRUCTURE_NAMES))
    body_disc_labels: np.ndarray | None = None
    compartment_labels: np.ndarray | None = None
    compartment_names: dict[int, str] = field(default_factory=lambda: dict(COMPARTMENT_NAMES))


def _z_range(spine: Spine, pelvis, scan_range: str, dz: float, rng: np.random.Generator) -> tuple[float, float]:
    """Lowest and highest slice centre for the scan range; ``l3_edge`` puts the L3 endplate in slice 0."""
    l3 = spine.by_name("L3")
    if scan_range == "abdomen_pelvis":
        return pelvis.head_z_mm - rng.uniform(45.0, 80.0), spine.by_name("T10").z_superior_mm + rng.uniform(0, 25)
    if scan_range == "chest_abdomen_pelvis":
        return pelvis.head_z_mm - rng.uniform(45.0, 80.0), spine.by_name("T1").z_superior_mm + rng.uniform(15, 40)
    if scan_range == "chest_only":
        return spine.by_name("L1").z_superior_mm - rng.uniform(0.0, 15.0), spine.by_name("T1").z_superior_mm + 30.0
    return l3.z_inferior_mm - rng.uniform(0.0, 0.45) * dz, spine.by_name("T6").z_superior_mm  # l3_edge


def make_phantom(variant: str = "normal", seed: int = 0, **options: Any) -> Phantom:
    """Generate one synthetic torso CT with exact ground truth, deterministically from ``seed``.

    Parameters
    ----------
    variant:
        One of :data:`l3node.phantom.variants.VARIANTS`.
    seed:
        Anatomy, habitus and any acquisition option not given are drawn from it.
    **options:
        Acquisition: ``matrix`` (e.g. 512, 256), ``pixel_mm`` (default: fits the body), ``slice_thickness_mm``,
        ``spacing_mm`` (default = thickness), ``scan_range`` (``abdomen_pelvis``,
        ``chest_abdomen_pelvis``, ``chest_only``, ``l3_edge``), ``position`` (``HFS``, ``FFS``,
        ``HFP``, ``FFP``), ``kernel`` (``smooth``, ``standard``, ``sharp``), ``phase``
        (``noncontrast``, ``arterial``, ``portal``), ``arms`` (``down``, ``up``, ``none``),
        ``metal`` (hip prosthesis), ``gantry_tilt_deg`` (DICOM export only), ``oral_contrast``,
        ``kvp``. Patient: ``sex``, ``height_m``, ``bmi``, ``age_years``, ``muscle_factor``.
        Anatomy: ``disc_nucleus`` (default False): every disc gets a nucleus darker than its
        annulus, as real discs have (see ``docs/phantom_note.md`` for why it is not the default).

    Returns
    -------
    Phantom
        ``ground_truth`` holds ``l3_inferior_endplate_z_mm`` (None when L3 is outside the scan),
        ``l3_slice_index``, ``variant``, ``variant_class``, ``components``, ``lumbar_count``,
        ``rib_pairs``, ``rib_lengths_mm``, ``twelfth_rib_length_mm``, ``vertebrae`` (each with
        ``z_inferior_mm`` = the BODY's inferior endplate; see ``vertebra_z_definition``),
        ``areas_cm2``, ``mean_hu`` (from ``tissue_labels`` on the L3 slice),
        ``compartment_areas_cm2``, ``tissue_definition``, ``patient``, ``acquisition`` and ``seed``.

    Raises
    ------
    ValueError
        For an unknown variant or option, or an invalid option value.
    """
    seeds = np.random.SeedSequence(seed).spawn(4)
    rng_anat, rng_acq, rng_fields, rng_range = (np.random.default_rng(s) for s in seeds)
    patient_opts = {k: options.pop(k) for k in _PATIENT_OPTIONS if k in options}
    disc_nucleus = bool(options.pop("disc_nucleus", False))
    components = variant_components(variant, rng_anat)
    segments = plan_segments(components, rng_anat)
    habitus = adjust_habitus(random_habitus(rng_anat), **patient_opts)
    acq = acq_mod.resolve_acquisition(options, rng_acq)
    scale = habitus.scale
    spine = layout_spine(segments, scale=scale, promontory_z_mm=float(rng_anat.uniform(-420.0, -160.0)),
                         rng=rng_anat)
    pelvis = build_pelvis(spine, scale=scale, female=habitus.sex == "F", metal=acq["metal"], rng=rng_anat)
    prone = acq["position"].endswith("P")
    torso = build_torso(habitus, spine, pelvis=pelvis, prone=prone, rng=rng_anat)
    ribs = build_rib_cage(torso)
    viscera = build_viscera(torso, pelvis, rng_anat)

    dz = float(acq["spacing_mm"])
    z_lo, z_hi = _z_range(spine, pelvis, acq["scan_range"], dz, rng_range)
    n_slices = int(np.floor((z_hi - z_lo) / dz)) + 1
    z0 = round(z_lo, 3)
    widest = max(torso.core_axes(z)[0] + float(torso.sat_thickness(z).max())
                 for z in np.linspace(z_lo, z_hi, 12))
    arms_extra = 2 * 85.0 * habitus.muscle_factor if acq["arms"] == "down" else 0.0
    n = acq["matrix"]
    # Fit the body (scanners reconstruct at most ~500 mm: arms and big bodies may be truncated).
    fit = float(np.ceil(min(2 * widest + arms_extra + 30.0, 500.0) / n * 1000) / 1000)
    pixel = float(acq["pixel_mm"] or max(fit, 0.5))
    acq["pixel_mm"] = pixel
    acq["field_of_view_mm"] = round(n * pixel, 2)
    x_mm = ((np.arange(n) - (n - 1) / 2) * pixel).astype(np.float32)
    y_shift = round(float(rng_range.uniform(5.0, 30.0)) * (-1 if prone else 1), 1)
    y_mm = ((np.arange(n) - (n - 1) / 2) * pixel + y_shift).astype(np.float32)

    scene = Scene(spine, torso, ribs, pelvis, viscera, habitus, acq, disc_nucleus)
    hu, structures, vertebra_labels, bodies = render_volume(scene, x_mm, y_mm, z0 + dz * np.arange(n_slices), rng_fields)
    volume = Volume(hu=hu, spacing_mm=(dz, pixel, pixel), origin_mm=(float(x_mm[0]), float(y_mm[0]), float(z0)))
    compartments = COMPARTMENT_OF_STRUCTURE[structures]
    tissues = tissues_from_hu(hu, compartments)
    patient = {"sex": habitus.sex, "height_m": habitus.height_m, "weight_kg": habitus.weight_kg,
               "age_years": int(habitus.age_years), "bmi": round(habitus.bmi, 1),
               "muscle_factor": round(habitus.muscle_factor, 3), "fat_infiltration": round(habitus.fat_infiltration, 3)}
    truth = ground_truth(volume=volume, tissues=tissues, spine=spine, ribs=ribs, variant=variant,
                         components=components, patient=patient, acquisition=acq, seed=seed,
                         compartments=compartments)
    truth["disc_nucleus"] = disc_nucleus
    log.debug("phantom_made", variant=variant, seed=seed, shape=volume.shape)
    return Phantom(volume, vertebra_labels, {v.label: v.name for v in spine.vertebrae}, tissues, truth,
                   patient, dict(acq), structures, body_disc_labels=bodies, compartment_labels=compartments)
