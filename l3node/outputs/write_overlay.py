"""The secondary-capture overlay: the L3 slice with the tissues and numbers burned in.

For people who open the study in any viewer (including those that show no SEG or SR): the
soft-tissue-windowed slice, each tissue filled semi-transparently with a coloured outline
(colours from :mod:`l3node.outputs.codes`: muscle red, IMAT green, VAT yellow, SAT cyan),
and a text panel below the image with the numbers, the L3 information and
"NOT FOR DIAGNOSTIC USE". The slice is enlarged by an integer factor (nearest neighbour)
to at least 512 pixels wide so the text stays legible on small matrices.

DICOM: Secondary Capture Image (PS3.3 A.8.1) in the source's Patient and Study
(``SCImage.from_ref_dataset``), RGB 8 bit, Burned In Annotation YES, Conversion Type WSD
(workstation), Patient Orientation from the source's Image Orientation.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from l3node.analysis.locate_l3 import L3Location
from l3node.analysis.measure import Measurements
from l3node.analysis.tissues import Tissue
from l3node.config import OutputsConfig
from l3node.outputs import codes

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
WINDOW_CENTER_HU = 40.0
WINDOW_WIDTH_HU = 400.0
FILL_ALPHA = 0.35
MIN_WIDTH_PX = 512
FONT_SIZE_PX = 14
LINE_SPACING_PX = 4
MARGIN_PX = 8


def window_to_uint8(
    hu_plane: np.ndarray, center: float = WINDOW_CENTER_HU, width: float = WINDOW_WIDTH_HU
) -> np.ndarray:
    """Linear window (PS3.3 C.11.2.1.2 style, simplified) mapped to 0..255."""
    low = center - width / 2.0
    scaled = (np.asarray(hu_plane, dtype=np.float32) - low) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def paint_tissues(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB image: each tissue filled with its colour at :data:`FILL_ALPHA`, outlined at full colour."""
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=2).astype(np.float32)
    for tissue in Tissue:
        mask = labels == tissue
        if not mask.any():
            continue
        colour = np.array(codes.SEGMENT_CODINGS[tissue].rgb, dtype=np.float32)
        rgb[mask] = (1.0 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * colour
        outline = mask & ~ndimage.binary_erosion(mask)
        rgb[outline] = colour
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def text_lines(measurements: Measurements, l3: L3Location) -> list[tuple[str, tuple[int, int, int]]]:
    """The burned-in text, one (line, colour) per row."""
    white = (255, 255, 255)
    lines: list[tuple[str, tuple[int, int, int]]] = [(NOT_FOR_DIAGNOSTIC_USE, (255, 60, 60))]
    level = f"L3 inferior endplate: {l3.status.value}"
    if l3.z_mm is not None:
        level += f", z = {l3.z_mm:.1f} mm"
    level += f", confidence {l3.confidence:.2f}, variant {l3.variant.value}"
    lines.append((level, white))
    lines.append((f"method: {l3.method}", white))
    for tissue in Tissue:
        measured = measurements.tissues.get(tissue)
        if measured is None:
            continue
        text = f"{tissue.label}: {measured.area_cm2:.1f} cm2, mean {_fmt(measured.mean_hu)} HU"
        text += f" (SD {_fmt(measured.sd_hu)})"
        lines.append((text, codes.SEGMENT_CODINGS[tissue].rgb))
    if measurements.smi_cm2_m2 is not None:
        smi = f"Skeletal muscle index: {measurements.smi_cm2_m2:.1f} cm2/m2"
    else:
        smi = "Skeletal muscle index: n/a (no patient height)"
    lines.append((smi, white))
    if measurements.flags:
        cutoffs = f" ({measurements.cutoff_set})" if measurements.cutoff_set else ""
        lines.append(("flags: " + ", ".join(measurements.flags) + cutoffs, (255, 200, 60)))
    for rule_field in ("muscle_mass_cutoff", "muscle_attenuation_cutoff"):
        rule = getattr(measurements, rule_field, None)
        if rule:
            lines.append((f"cut-off: {rule}", (200, 200, 200)))
    if measurements.quality_flags:
        lines.append(("CHECK the slice: " + ", ".join(measurements.quality_flags), (255, 120, 40)))
    for note in (*l3.notes, *measurements.notes):
        lines.append((note, (200, 200, 200)))
    return lines


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width_px: int) -> list[str]:
    words, rows, current = text.split(), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width_px:
            rows.append(current)
            current = word
        else:
            current = candidate
    return [*rows, current] if current else rows


def render_overlay(
    hu_plane: np.ndarray, labels: np.ndarray, measurements: Measurements, l3: L3Location
) -> np.ndarray:
    """The overlay pixels, ``(rows, cols, 3)`` uint8 RGB (image above, text panel below).

    Raises
    ------
    ValueError
        If ``hu_plane`` and ``labels`` differ in shape or are not 2D.
    """
    hu_plane, labels = np.asarray(hu_plane), np.asarray(labels)
    if hu_plane.ndim != 2 or hu_plane.shape != labels.shape:
        raise ValueError(f"hu_plane {hu_plane.shape} and labels {labels.shape} must be the same 2D shape")
    painted = paint_tissues(window_to_uint8(hu_plane), labels)
    scale = max(1, math.ceil(MIN_WIDTH_PX / painted.shape[1]))
    image = Image.fromarray(painted, mode="RGB").resize(
        (painted.shape[1] * scale, painted.shape[0] * scale), resample=Image.Resampling.NEAREST
    )
    font = ImageFont.load_default(size=FONT_SIZE_PX)
    probe = ImageDraw.Draw(image)
    rows: list[tuple[str, tuple[int, int, int]]] = []
    for text, colour in text_lines(measurements, l3):
        rows.extend((row, colour) for row in _wrap(text, probe, font, image.width - 2 * MARGIN_PX))
    line_px = FONT_SIZE_PX + LINE_SPACING_PX
    panel_px = 2 * MARGIN_PX + line_px * len(rows)
    canvas = Image.new("RGB", (image.width, image.height + panel_px), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    # The warning also goes on the image itself, so a cropped view still carries it.
    box = draw.textbbox((MARGIN_PX, MARGIN_PX), NOT_FOR_DIAGNOSTIC_USE, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((MARGIN_PX, MARGIN_PX), NOT_FOR_DIAGNOSTIC_USE, fill=(255, 60, 60), font=font)
    y = image.height + MARGIN_PX
    for text, colour in rows:
        draw.text((MARGIN_PX, y), text, fill=colour, font=font)
        y += line_px
    return np.asarray(canvas, dtype=np.uint8)


def patient_orientation(source: pydicom.Dataset) -> tuple[str, str]:
    """Patient Orientation (0020,0020): dominant direction of rows and columns (PS3.3 C.7.6.1.1.1).

    Raises
    ------
    ValueError
        If the source has no Image Orientation (Patient).
    """
    if "ImageOrientationPatient" not in source:
        raise ValueError("source image lacks ImageOrientationPatient")
    cosines = [float(v) for v in source.ImageOrientationPatient]

    def letter(vector: list[float]) -> str:
        # The dominant axis only: highdicom accepts one letter per direction.
        axis = max(range(3), key=lambda a: abs(vector[a]))
        return (("L", "R"), ("P", "A"), ("H", "F"))[axis][0 if vector[axis] > 0 else 1]

    return letter(cosines[:3]), letter(cosines[3:])


def make_overlay(
    source: pydicom.Dataset,
    hu_plane: np.ndarray,
    labels: np.ndarray,
    measurements: Measurements,
    l3: L3Location,
    config: OutputsConfig,
) -> hd.sc.SCImage:
    """Build the secondary-capture overlay of the L3 slice.

    Parameters
    ----------
    source
        The L3 CT image: patient, study and orientation are taken from it.
    hu_plane
        The slice in HU, ``(Rows, Columns)`` of the source.
    labels
        Tissue label map on the same grid (0 background, :class:`Tissue` values).
    measurements, l3
        The numbers and L3 information burned in.
    config
        ``outputs`` section: ``overlay`` series number/description, manufacturer,
        institution.

    Returns
    -------
    highdicom.sc.SCImage
        RGB secondary capture, Burned In Annotation YES.

    Raises
    ------
    ValueError
        If the arrays do not match the source image or each other.
    """
    hu_plane = np.asarray(hu_plane)
    if hu_plane.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"hu_plane shape {hu_plane.shape} != source image ({source.Rows}, {source.Columns})")
    pixels = render_overlay(hu_plane, labels, measurements, l3)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=generate_uid(),
        series_number=config.overlay.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=config.manufacturer,
        patient_orientation=patient_orientation(source),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=config.overlay.series_description,
        institution_name=config.institution_name,
    )
    # An axial slice at L3 shows the abdomen, whatever the source series says (real headers
    # carry terms such as PARTIALBODY that dciodvfy treats as possibly paired, which then
    # requires General Series Laterality): ABDOMEN (PS3.16 Annex L) is true and unpaired.
    sc.BodyPartExamined = "ABDOMEN"
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # made on a workstation, not digitized (highdicom writes DI)
    sc.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    sc.DerivationDescription = "L3 tissue segmentation overlay with burned-in measurements"
    return sc
