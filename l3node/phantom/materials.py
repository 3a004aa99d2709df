"""Structure codes painted by the phantom, their tissue label and their Hounsfield units.

The generator paints a uint8 *structure map* (codes below). The noiseless HU (mean + texture,
clipped per structure) and the body-composition *compartments* derive from it through look-up
tables. The tissue labels of the paper (:class:`~l3node.analysis.tissues.Tissue`) are NOT
painted: they are the compartments thresholded on the final (blurred, noisy) image, see
:func:`l3node.phantom.truth.tissues_from_hu`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from l3node.analysis.tissues import Tissue
from l3node.config import AnalysisConfig

_ANALYSIS = AnalysisConfig()
MUSCLE_HU_RANGE = (float(_ANALYSIS.muscle_hu.min), float(_ANALYSIS.muscle_hu.max))
FAT_HU_RANGE = (float(_ANALYSIS.fat_hu.min), float(_ANALYSIS.fat_hu.max))


class Structure(IntEnum):
    """Codes of the structure map (``Phantom.structure_labels``)."""

    AIR = 0
    MUSCLE = 1  # skeletal muscle of the torso (muscle compartment)
    IMAT = 2  # fat painted inside muscle fascia (muscle compartment)
    VAT = 3  # fat inside the abdominal wall, around the organs (visceral compartment)
    SAT = 4  # fat between skin and muscle fascia (subcutaneous compartment)
    SKIN = 10
    TABLE_SHELL = 11
    TABLE_FOAM = 12
    CORTICAL = 13
    CANCELLOUS = 14
    DISC = 15
    CANAL = 16  # thecal sac / CSF
    EPIDURAL_FAT = 17  # fat around the spine, not VAT
    LIVER = 18
    SPLEEN = 19
    KIDNEY_CORTEX = 20
    KIDNEY_MEDULLA = 21
    AORTA = 22
    IVC = 23
    BOWEL_WALL = 24
    BOWEL_FLUID = 25
    BOWEL_GAS = 26
    FECES = 27
    BLADDER = 28
    LUNG = 29
    HEART = 30
    ARM_MUSCLE = 31  # arm muscle: excluded from L3 tissues, as in the paper
    ARM_FAT = 32
    METAL = 33
    STOMACH_WALL = 34
    CARTILAGE = 35
    THORACIC_FAT = 36  # mediastinal / pericardial fat above the diaphragm, not VAT
    PANCREAS = 37
    MARROW = 38  # fatty marrow of long bones
    THIN_CORTEX = 39  # endplates and thin bone plates, partial-volumed cortex
    DISC_NUCLEUS = 44  # the disc's nucleus pulposus, darker than its annulus
    # Never painted: the truth relabels slice-centre codes (see l3node.phantom.render.settle_truth).
    SLAB_BONE = 40  # soft tissue at the slice centre with bone elsewhere in the slab: partial volume, no compartment
    PARASPINAL_FAT = 41  # fat enclosed by the vertebra and the back muscles, psoas or QL: fat around the spine, not VAT
    INTERMUSCULAR_FAT = 42  # fat pocket enclosed by muscle alone (muscle compartment: IMAT), not VAT
    BACK_MUSCLE = 43  # erector spinae and multifidus: with myosteatosis fattier (darker) than psoas and wall


STRUCTURE_NAMES: dict[int, str] = {int(s): s.name.lower() for s in Structure}

class Compartment(IntEnum):
    """Codes of ``Phantom.compartment_labels``: where each tissue of the paper may lie."""

    NONE = 0
    MUSCLE = 1  # inside the fascia of psoas, quadratus lumborum, paraspinal and abdominal wall muscles
    VISCERAL = 2  # inside the abdominal wall, excluding organs, bowel, vessels and spine
    SUBCUTANEOUS = 3  # between the skin and the abdominal wall fascia


_COMPARTMENT_OF = np.zeros(256, np.uint8)
for _s, _c in ((Structure.MUSCLE, Compartment.MUSCLE), (Structure.BACK_MUSCLE, Compartment.MUSCLE),
               (Structure.IMAT, Compartment.MUSCLE),
               (Structure.INTERMUSCULAR_FAT, Compartment.MUSCLE),
               (Structure.VAT, Compartment.VISCERAL), (Structure.SAT, Compartment.SUBCUTANEOUS)):
    _COMPARTMENT_OF[int(_s)] = int(_c)
COMPARTMENT_OF_STRUCTURE: np.ndarray = _COMPARTMENT_OF
"""uint8 LUT structure code -> :class:`Compartment` value."""

COMPARTMENT_NAMES: dict[int, str] = {int(c): c.name.lower() for c in Compartment if c}

_TISSUE_OF = np.zeros(256, np.uint8)
for _s, _t in ((Structure.MUSCLE, Tissue.SKELETAL_MUSCLE), (Structure.BACK_MUSCLE, Tissue.SKELETAL_MUSCLE),
               (Structure.IMAT, Tissue.IMAT),
               (Structure.VAT, Tissue.VAT), (Structure.SAT, Tissue.SAT)):
    _TISSUE_OF[int(_s)] = int(_t)
TISSUE_OF_STRUCTURE: np.ndarray = _TISSUE_OF
"""uint8 LUT structure code -> the Tissue it was painted as (0 elsewhere); NOT the ground truth,
which thresholds the compartments on the final image."""

_BASE_HU: dict[Structure, tuple[float, float]] = {
    # (mean HU, texture amplitude HU)
    Structure.AIR: (-1000.0, 2.0),
    Structure.MUSCLE: (45.0, 8.0),
    Structure.BACK_MUSCLE: (45.0, 8.0),
    Structure.IMAT: (-70.0, 12.0),
    Structure.VAT: (-92.0, 13.0),
    Structure.SAT: (-100.0, 12.0),
    Structure.SKIN: (35.0, 10.0),
    Structure.TABLE_SHELL: (70.0, 20.0),
    Structure.TABLE_FOAM: (-930.0, 15.0),
    Structure.CORTICAL: (560.0, 90.0),
    Structure.CANCELLOUS: (230.0, 32.0),
    Structure.DISC: (85.0, 10.0),  # the annulus fibrosus
    # Real CT (ts_example_ct, L2/L3 disc, smoothed): annulus 70-90 HU, nucleus 60-68 HU.
    Structure.DISC_NUCLEUS: (62.0, 8.0),
    Structure.CANAL: (12.0, 5.0),
    Structure.EPIDURAL_FAT: (-90.0, 12.0),
    Structure.LIVER: (58.0, 6.0),
    Structure.SPLEEN: (48.0, 5.0),
    Structure.KIDNEY_CORTEX: (32.0, 5.0),
    Structure.KIDNEY_MEDULLA: (30.0, 5.0),
    Structure.AORTA: (42.0, 3.0),
    Structure.IVC: (40.0, 3.0),
    Structure.BOWEL_WALL: (40.0, 8.0),
    Structure.BOWEL_FLUID: (15.0, 8.0),
    Structure.BOWEL_GAS: (-950.0, 30.0),
    Structure.FECES: (28.0, 22.0),  # mottled stool; its gas bubbles are BOWEL_GAS
    Structure.BLADDER: (8.0, 4.0),
    Structure.LUNG: (-860.0, 40.0),
    Structure.HEART: (42.0, 5.0),
    Structure.ARM_MUSCLE: (48.0, 7.0),
    Structure.ARM_FAT: (-105.0, 9.0),
    Structure.METAL: (3000.0, 50.0),
    Structure.STOMACH_WALL: (42.0, 6.0),
    Structure.CARTILAGE: (160.0, 40.0),
    Structure.THORACIC_FAT: (-95.0, 10.0),
    Structure.PANCREAS: (40.0, 8.0),
    Structure.MARROW: (-40.0, 25.0),
    Structure.THIN_CORTEX: (280.0, 50.0),
    # Relabelled after rendering (the HU came from the painted code); listed so that every code has a row.
    Structure.SLAB_BONE: (45.0, 8.0),
    Structure.PARASPINAL_FAT: (-92.0, 13.0),
    Structure.INTERMUSCULAR_FAT: (-92.0, 13.0),
}

# The bowel and stomach wall enhance too: normal small-bowel wall 118-120 HU in the arterial
# and 107-111 HU in the portal phase (50 healthy adults, water as oral contrast, 150 ml
# iodinated contrast at 3 ml/s; scans at 30 and 60 s).
_CONTRAST: dict[str, dict[Structure, float]] = {
    "noncontrast": {},
    "arterial": {Structure.AORTA: 320.0, Structure.IVC: 60.0, Structure.KIDNEY_CORTEX: 190.0,
                 Structure.KIDNEY_MEDULLA: 70.0, Structure.SPLEEN: 110.0, Structure.LIVER: 75.0,
                 Structure.HEART: 250.0, Structure.PANCREAS: 110.0,
                 Structure.BOWEL_WALL: 118.0, Structure.STOMACH_WALL: 118.0},
    "portal": {Structure.AORTA: 170.0, Structure.IVC: 150.0, Structure.KIDNEY_CORTEX: 170.0,
               Structure.KIDNEY_MEDULLA: 150.0, Structure.SPLEEN: 115.0, Structure.LIVER: 110.0,
               Structure.HEART: 150.0, Structure.PANCREAS: 95.0,
               Structure.BOWEL_WALL: 109.0, Structure.STOMACH_WALL: 109.0},
}


BACK_MUSCLE_OFFSET_HU = 20.0
"""At full myosteatosis (``fat_infiltration`` 1) the back muscles are this much darker than
the other torso muscles; the offset scales with the infiltration (about 12 HU at 80 years)."""


def hu_tables(*, age_years: float, muscle_fat_infiltration: float, phase: str,
              oral_contrast: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Look-up tables (mean, texture amplitude, low clip, high clip), each float32[256].

    Muscle HU falls with age and fatty infiltration (myosteatosis), the back muscles' most;
    cancellous bone HU falls with age (osteoporosis).

    Raises
    ------
    ValueError
        If ``phase`` is unknown.
    """
    if phase not in _CONTRAST:
        raise ValueError(f"unknown phase {phase!r}; choose one of {', '.join(_CONTRAST)}")
    mean = np.zeros(256, np.float32)
    amp = np.zeros(256, np.float32)
    lo = np.full(256, -1024.0, np.float32)
    hi = np.full(256, 3071.0, np.float32)
    for structure, (mu, a) in _BASE_HU.items():
        mean[int(structure)], amp[int(structure)] = mu, a
    for structure, mu in _CONTRAST[phase].items():
        mean[int(structure)] = mu
    older = max(age_years - 30.0, 0.0)
    # Healthy young muscle ~50 HU; elderly, fat-infiltrated muscle down to ~15-25 HU (myosteatosis).
    muscle = max(56.0 - 0.36 * older - 16.0 * muscle_fat_infiltration, 12.0)
    mean[int(Structure.MUSCLE)] = mean[int(Structure.ARM_MUSCLE)] = muscle
    # The back muscles take up fat first: up to BACK_MUSCLE_OFFSET_HU darker than psoas and
    # wall (real CT at L3, ts_example_ct: back 11 HU, wall 30 HU).
    mean[int(Structure.BACK_MUSCLE)] = max(muscle - BACK_MUSCLE_OFFSET_HU * muscle_fat_infiltration, 0.0)
    # Cancellous bone ~250 HU at 30 years, ~120 HU at 80 (osteoporosis), never below 95.
    mean[int(Structure.CANCELLOUS)] = max(252.0 - 2.6 * older, 95.0)
    if oral_contrast:
        mean[int(Structure.BOWEL_FLUID)] = 280.0
        amp[int(Structure.BOWEL_FLUID)] = 40.0
    lo[int(Structure.FECES)], hi[int(Structure.FECES)] = -20.0, 140.0
    for structure in (Structure.MUSCLE, Structure.BACK_MUSCLE):
        lo[int(structure)], hi[int(structure)] = MUSCLE_HU_RANGE[0] + 5, MUSCLE_HU_RANGE[1] - 5
    for structure in (Structure.IMAT, Structure.VAT, Structure.SAT, Structure.PARASPINAL_FAT,
                      Structure.INTERMUSCULAR_FAT):
        lo[int(structure)], hi[int(structure)] = FAT_HU_RANGE[0] + 5, FAT_HU_RANGE[1] - 5
    return mean, amp, lo, hi
