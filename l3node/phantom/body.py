"""The person around the skeleton: habitus, body wall (skin, SAT, abdominal wall muscles),
posterior and psoas muscles, VAT cavity, arms and the CT table.

The torso outline is star-shaped about (x, y) = (0, 0) and described per slice by a radius
for each of :data:`~l3node.phantom.canvas.N_ANGLES` directions, which makes every layer one
vectorised comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.interpolate import PchipInterpolator

from l3node.phantom.anatomy import Spine
from l3node.phantom.canvas import SliceCanvas, angles
from l3node.phantom.materials import Structure

M, F, V, S = int(Structure.MUSCLE), int(Structure.IMAT), int(Structure.VAT), int(Structure.SAT)
B = int(Structure.BACK_MUSCLE)


@dataclass(frozen=True)
class Habitus:
    """Who the phantom is; factors are 1 for an average adult."""

    sex: str
    height_m: float
    weight_kg: float
    age_years: float
    muscle_factor: float  # 0.6 sarcopenic .. 1.4 athletic
    sat_factor: float  # subcutaneous fat, 0.1 lean .. 1.8 obese
    vat_factor: float  # visceral fat
    fat_infiltration: float  # 0..1, myosteatosis (lower muscle HU, more IMAT)

    @property
    def bmi(self) -> float:
        return self.weight_kg / self.height_m**2

    @property
    def scale(self) -> float:
        return self.height_m / (1.76 if self.sex == "M" else 1.70)


def _sat_base(bmi: float, sex: str) -> float:
    return float(np.clip((bmi - 16.5) / 11.0, 0.08, 1.9)) * (1.3 if sex == "F" else 0.9)


def _vat_base(bmi: float, sex: str, age: float) -> float:
    return float(np.clip((bmi - 17.0) / 13.0, 0.05, 1.6)) * (1.2 if sex == "M" else 0.75) * (0.8 + age / 200)


def _infiltration_base(age: float, bmi: float) -> float:
    return 0.012 * (age - 30) + 0.02 * (bmi - 25)


def _muscle_base(age: float, sex: str) -> float:
    return (1.0 - 0.004 * (age - 50)) * (1.16 if sex == "M" else 0.84)  # men carry more muscle


def random_habitus(rng: np.random.Generator) -> Habitus:
    """Draw a plausible adult: sex, height, BMI 17-42, age 22-88, muscle mass and fat."""
    sex = "M" if rng.random() < 0.5 else "F"
    height = float(np.clip(rng.normal(1.76 if sex == "M" else 1.63, 0.07), 1.45, 2.0))
    bmi = float(np.clip(rng.triangular(17.0, 25.5, 42.0), 17.0, 42.0))
    age = float(rng.uniform(22.0, 88.0))
    muscle = float(np.clip(_muscle_base(age, sex) * rng.normal(1.0, 0.16), 0.55, 1.45))
    sat = _sat_base(bmi, sex) * rng.uniform(0.8, 1.2)
    vat = _vat_base(bmi, sex, age) * rng.uniform(0.8, 1.2)
    infiltration = float(np.clip(_infiltration_base(age, bmi) + rng.normal(0, 0.1), 0.0, 1.0))
    return Habitus(sex, round(height, 2), round(bmi * height**2, 1), round(age), muscle, sat, vat, infiltration)


def adjust_habitus(h: Habitus, *, sex: str | None = None, height_m: float | None = None, bmi: float | None = None,
                   age_years: float | None = None, muscle_factor: float | None = None) -> Habitus:
    """Apply patient choices, keeping this person's random deviations from the population trends.

    Raises
    ------
    ValueError
        If ``sex`` is not ``"M"`` or ``"F"`` or a number is out of range.
    """
    if sex is not None and sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', not {sex!r}")
    new_sex = sex or h.sex
    new_height = float(height_m or h.height_m)
    new_bmi = float(bmi or h.bmi)
    new_age = float(age_years if age_years is not None else h.age_years)
    if not (1.2 <= new_height <= 2.3 and 12.0 <= new_bmi <= 70.0 and 0.0 < new_age < 120.0):
        raise ValueError(f"patient out of range: height {new_height} m, BMI {new_bmi}, age {new_age}")
    muscle = muscle_factor if muscle_factor is not None else (
        h.muscle_factor * _muscle_base(new_age, new_sex) / _muscle_base(h.age_years, h.sex))
    return Habitus(
        new_sex, round(new_height, 2), round(new_bmi * new_height**2, 1), round(new_age), float(muscle),
        h.sat_factor * _sat_base(new_bmi, new_sex) / _sat_base(h.bmi, h.sex),
        h.vat_factor * _vat_base(new_bmi, new_sex, new_age) / _vat_base(h.bmi, h.sex, h.age_years),
        float(np.clip(h.fat_infiltration + _infiltration_base(new_age, new_bmi) - _infiltration_base(h.age_years, h.bmi),
                      0.0, 1.0)),
    )


def _superellipse_radius(theta: np.ndarray, a: float, b_ant: float, b_post: float, p_ant: float, p_post: float):
    s, c = np.abs(np.sin(theta)), np.cos(theta)
    b = np.where(c >= 0, b_ant, b_post)
    p = np.where(c >= 0, p_ant, p_post)
    return (np.power(s / a, p) + np.power(np.abs(c) / b, p)) ** (-1.0 / p)


@dataclass(frozen=True)
class Torso:
    """Smooth z-dependent outline parameters built from the habitus and the skeleton."""

    habitus: Habitus
    spine: Spine
    landmarks_z: np.ndarray  # increasing z of the profile knots
    a_knots: np.ndarray  # lateral core semi-axis at the knots
    b_knots: np.ndarray  # anterior core semi-axis at the knots
    harmonics: np.ndarray  # (n, 3): amplitude, order, phase of outline wobble
    prone: bool
    femoral_head_z_mm: float
    iliac_crest_z_mm: float
    diaphragm_z_mm: float

    @cached_property
    def _profile(self) -> PchipInterpolator:
        """Smooth (monotone cubic) lateral and anterior semi-axes along z."""
        return PchipInterpolator(self.landmarks_z, np.stack([self.a_knots, self.b_knots], axis=1))

    def core_axes(self, z: float) -> tuple[float, float, float]:
        """Lateral, anterior and posterior semi-axes of the muscle fascia at ``z``."""
        zc = float(np.clip(z, self.landmarks_z[0], self.landmarks_z[-1]))
        a, b_ant = (float(v) for v in self._profile(zc))
        y_spine = self.spine.y_centre_at(z)
        b_post = y_spine + self.spine.half_depth_at(z) + 64.0 + 8.0 * self.habitus.muscle_factor
        return a, b_ant, b_post

    def core_radius(self, z: float) -> np.ndarray:
        a, b_ant, b_post = self.core_axes(z)
        theta = angles()
        p_ant, p_post = (2.3, 3.2) if not self.prone else (3.2, 2.3)
        r = _superellipse_radius(theta, a, b_ant, b_post, p_ant, p_post)
        wobble = 1.0 + sum(amp * np.cos(order * theta + phase + 0.004 * z * order)
                           for amp, order, phase in self.harmonics)
        return r * wobble

    def sat_thickness(self, z: float) -> np.ndarray:
        """SAT thickness (mm) by angle: thicker in front and, in women, over the hips."""
        theta = angles()
        h = self.habitus
        base = 3.0 + 22.0 * h.sat_factor
        front = np.clip(np.cos(theta), 0, None)
        back = np.clip(-np.cos(theta), 0, None)
        hip = 0.0
        if h.sex == "F":
            hip = 0.6 * np.exp(-((z - self.iliac_crest_z_mm + 40.0) / 70.0) ** 2) * np.abs(np.sin(theta))
        pannus = 0.5 * max(h.sat_factor - 0.8, 0.0) * front**3
        posterior = 0.45 if not self.prone else 0.9
        anterior = 0.45 if self.prone else 0.0
        thickness = base * (1.0 + 0.35 * front + pannus + hip - posterior * back**2 - anterior * front**2)
        # Person-specific unevenness (flanks, "love handles"), slowly changing with z.
        amp2, _, phase2 = self.harmonics[0]
        amp3, _, phase3 = self.harmonics[1]
        thickness *= 1.0 + 6.0 * amp2 * np.cos(2 * theta + phase2 + 0.006 * z) + 5.0 * amp3 * np.cos(
            3 * theta + phase3 - 0.005 * z)
        return np.maximum(thickness, 2.5)

    def wall_thickness(self, z: float) -> np.ndarray:
        """Abdominal wall muscle thickness (mm) by angle."""
        theta = angles()
        m = self.habitus.muscle_factor
        folded = np.minimum(theta, 2 * np.pi - theta)  # 0 anterior .. pi posterior
        rectus = np.where(folded < 0.5, 10.0 * m + 2.0, 0.0)
        obliques = np.where((folded >= 0.5) & (folded < 2.2), 14.0 * m + 3.0, 0.0)
        lat = np.where(folded >= 2.2, (7.0 * m + 2.0) * (1.0 + 0.8 * np.clip((2.9 - folded) / 0.7, 0, 1)), 0.0)
        return np.maximum(rectus + obliques + lat, 3.0)


def build_torso(habitus: Habitus, spine: Spine, *, pelvis, prone: bool, rng: np.random.Generator) -> Torso:
    """Core outline knots from the femoral heads to T1 for this habitus (wide enough for the pelvis)."""
    femoral_head_z, iliac_crest_z = pelvis.head_z_mm, pelvis.crest_z_mm
    glute = 14.0 + 14.0 * habitus.muscle_factor
    h = habitus
    width = h.scale * (1.0 if h.sex == "M" else 0.94)
    a_l3 = (112.0 + 26.0 * h.vat_factor + 14.0 * (h.muscle_factor - 1.0)) * width
    b_l3 = (62.0 + 38.0 * h.vat_factor) * width
    z_l3 = (spine.by_name("L3").z_inferior_mm + spine.by_name("L3").z_superior_mm) / 2
    z_t12 = spine.by_name("T12").z_inferior_mm
    z_t9 = spine.by_name("T9").z_superior_mm
    z_t5 = spine.by_name("T5").z_superior_mm
    z_t1 = spine.by_name("T1").z_superior_mm
    hips = 1.28 if h.sex == "F" else 1.16
    knots = [
        (femoral_head_z - 200.0, max(a_l3 * hips, pelvis.trochanter_half_width_mm + glute), b_l3 * 0.85),
        (femoral_head_z, max(a_l3 * hips, pelvis.trochanter_half_width_mm + glute), b_l3 * 0.85),
        (iliac_crest_z, max(a_l3 * hips * 0.92, pelvis.crest_half_width_mm + 12.0), b_l3 * 0.92),
        (z_l3, a_l3, b_l3),
        (z_t12, a_l3 * 1.04, b_l3 * 1.04 + 6.0),
        (z_t9, a_l3 * 1.06, b_l3 * 1.0 + 22.0),
        (z_t5, a_l3 * 1.0, b_l3 * 0.8 + 35.0),
        (z_t1, a_l3 * 0.72, b_l3 * 0.5 + 20.0),
        (z_t1 + 200.0, a_l3 * 0.5, b_l3 * 0.4 + 15.0),
    ]
    z, a, b = (np.array(v) for v in zip(*knots))
    harmonics = np.array([[rng.uniform(0.0, 0.02), order, rng.uniform(0, 2 * np.pi)] for order in (2, 3, 4, 5)])
    return Torso(h, spine, z, a, b, harmonics, prone, femoral_head_z, iliac_crest_z, z_t9 - 10.0)


def paint_body(canvas: SliceCanvas, torso: Torso, z: float) -> np.ndarray:
    """Skin, SAT, wall muscle and VAT cavity; returns the boolean cavity mask."""
    core = torso.core_radius(z)
    sat = torso.sat_thickness(z)
    wall = torso.wall_thickness(z)
    depth = core.astype(np.float32)[canvas.angle_bin] - canvas.radius_mm  # >0 inside the fascia
    sat_px = sat.astype(np.float32)[canvas.angle_bin]
    wall_px = wall.astype(np.float32)[canvas.angle_bin]
    image = canvas.image
    image[depth > -sat_px] = int(Structure.SKIN)
    image[depth > -sat_px + 2.0] = S
    image[depth > 0] = M
    # Thin fat planes between the oblique muscle layers (fat inside muscle fascia: IMAT).
    folded = np.minimum(canvas.angle_bin, 720 - canvas.angle_bin)
    lateral = (folded > 70) & (folded < 240)
    for frac in (0.35, 0.68):
        image[lateral & (np.abs(depth - frac * wall_px) < 0.7)] = F
    cavity = depth > wall_px
    image[cavity] = V
    image[(folded < 2) & (depth > 0) & ~cavity] = int(Structure.SKIN)  # linea alba
    return cavity


def paint_posterior_muscles(canvas: SliceCanvas, torso: Torso, z: float, cavity: np.ndarray) -> None:
    """Fill behind the spine with paraspinal muscle; add psoas and quadratus lumborum."""
    spine = torso.spine
    m = torso.habitus.muscle_factor
    y_c = spine.y_centre_at(z)
    hw = spine.half_width_at(z)
    hd = spine.half_depth_at(z)
    a, _, b_post = torso.core_axes(z)
    apex = y_c + hd + 4.0
    k = max(b_post - apex - 8.0, 5.0) / (0.3 * a) ** 2
    x = canvas.x_mm[None, :]
    y = canvas.y_mm[:, None]
    behind = cavity & (y > apex + k * x * x)
    canvas.image[behind] = B
    # Erector spinae: two rounded masses either side of the spinous processes.
    ex, ey = hw * 0.3 + 22.0 * m + 6.0, b_post - 17.0 * m - 9.0
    for s in (-1, 1):
        canvas.ellipse(B, s * ex, ey, 22.0 * m + 7.0, 17.0 * m + 7.0, s * 0.25, only=(V,))
    tp = max(v.tp_length_mm for v in spine.vertebrae if v.spec.kind != "sacrum")
    # Multifidus/intertransversarii and the psoas origins hug the posterior elements.
    canvas.ellipse(B, 0.0, y_c + hd + 6.0, hw + 0.55 * tp, hd * 0.8 + 6.0, only=(V,))
    l1 = spine.by_name("L1")
    z_start = spine.by_name("T12").z_inferior_mm + 10.0
    if z < z_start and z > torso.femoral_head_z_mm - 40.0:
        sacrum_top = spine.sacrum.z_superior_mm
        grow = np.clip((z_start - z) / (z_start - sacrum_top), 0.0, 1.0)
        r = (6.0 + 17.0 * grow**0.8) * m
        if z >= sacrum_top:
            px, py = hw + 0.8 * r, y_c + 0.2 * hd - 0.1 * r
        else:
            f = np.clip((sacrum_top - z) / (sacrum_top - torso.femoral_head_z_mm), 0.0, 1.0)
            px, py = (hw + 0.8 * r) * (1 - f) + 0.55 * a * f, (y_c + 0.2 * hd) * (1 - f) - 25.0 * f
        for s in (-1, 1):
            canvas.ellipse(M, s * px, py, r * 1.05, r * 0.95, only=(V, M, B))
    if torso.iliac_crest_z_mm - 5.0 < z < (l1.z_superior_mm + spine.by_name("T12").z_inferior_mm) / 2:
        # Quadratus lumborum: a flat band on the posterior abdominal wall from the transverse process
        # tips (medial) to the anterolateral surface of the erector spinae / thoracolumbar fascia
        # (lateral-posterior), lateral to psoas; both ends lie inside those structures, so it abuts them.
        ty = y_c + hd + 8.0 + 2.0  # level of the transverse processes (canal centre + ~1 mm)
        ea, eb = 22.0 * m + 7.0, 17.0 * m + 7.0
        for s in (-1, 1):
            medial = (s * (hw + 0.75 * tp), ty)
            lateral = (s * (ex + 0.55 * ea), ey - 0.55 * eb)
            thick = 6.0 * m + 3.0
            canvas.capsule(M, medial, lateral, thick, only=(V, M, B))
            mid = ((medial[0] + lateral[0]) / 2 + s * 4.0, (medial[1] + lateral[1]) / 2 - 2.0)
            canvas.ellipse(M, mid[0], mid[1], 13.0 * m + 3.0, thick + 2.0,
                           float(np.arctan2(lateral[1] - medial[1], lateral[0] - medial[0])), only=(V, M, B))


def paint_imat(canvas: SliceCanvas, streaks: np.ndarray, threshold: float) -> None:
    """Turn muscle pixels where the streak field exceeds ``threshold`` into IMAT (and arm fat)."""
    image = canvas.image
    fat = streaks > threshold
    image[((image == M) | (image == B)) & fat] = F
    image[(image == int(Structure.ARM_MUSCLE)) & fat] = int(Structure.ARM_FAT)


def paint_arms(canvas: SliceCanvas, torso: Torso, z: float, arms: str) -> None:
    """Arms hanging beside the torso (``arms="down"``) from the shoulders to the hands."""
    if arms != "down" or z < torso.femoral_head_z_mm - 30.0 or z > torso.landmarks_z[-2]:
        return
    a, b_ant, _ = torso.core_axes(z)
    sat = float(torso.sat_thickness(z)[180])
    m = torso.habitus.muscle_factor
    elbow = torso.spine.by_name("L2").z_superior_mm
    upper = z > elbow
    r = (30.0 if upper else 26.0) * m + 4.0
    fat = 4.0 + 0.5 * sat
    a_ref = float(np.interp(elbow + 60.0, torso.landmarks_z, torso.a_knots))  # arms hang straight
    cx = a_ref + sat + 4.0 + r + fat
    y = 0.3 * torso.core_axes(z)[2]
    for s in (-1, 1):
        x = s * cx
        canvas.ellipse(int(Structure.SKIN), x, y, r + fat + 1.5, r + fat + 1.5, only=(int(Structure.AIR),))
        canvas.ellipse(int(Structure.ARM_FAT), x, y, r + fat, r + fat, only=(int(Structure.SKIN),))
        canvas.ellipse(int(Structure.ARM_MUSCLE), x, y, r, r, only=(int(Structure.ARM_FAT),))
        if upper:
            canvas.ellipse(int(Structure.CORTICAL), x, y + 2.0, 11.0, 11.0, only=(int(Structure.ARM_MUSCLE),))
            canvas.ellipse(int(Structure.MARROW), x, y + 2.0, 6.5, 6.5)
        else:
            for dx in (-9.0, 9.0):
                canvas.ellipse(int(Structure.CORTICAL), x + dx, y, 6.5, 6.5, only=(int(Structure.ARM_MUSCLE),))
                canvas.ellipse(int(Structure.MARROW), x + dx, y, 3.0, 3.0, only=(int(Structure.CORTICAL),))


def paint_table(canvas: SliceCanvas, torso: Torso, z: float) -> None:
    """The curved carbon-fibre table (thin shells around foam) under the patient, or in front if prone."""
    core = torso.core_radius(z)
    sat = torso.sat_thickness(z)
    x = canvas.x_mm[None, :]
    y = canvas.y_mm[:, None]
    if torso.prone:
        top = -float(core[0] + sat[0]) - 1.0
        depth = top - y + 0.0009 * x * x  # >0 beyond the (concave) table surface
    else:
        top = float(core[360] + sat[360]) + 1.0
        depth = y - top + 0.0009 * x * x
    inside = (depth >= 0) & (depth < 42.0) & (np.abs(x) < 235.0)
    image = canvas.image
    image[inside] = int(Structure.TABLE_SHELL)
    image[inside & (depth > 1.5) & (depth < 40.5) & (np.abs(x) < 233.0)] = int(Structure.TABLE_FOAM)
