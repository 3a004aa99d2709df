"""The L3 network as a second opinion beside the anatomy-based locator.

The anatomy (counting vertebrae from the ribs and the sacrum) names L3; the network,
trained on phantoms, only checks it. When the two disagree by more than
``DISAGREEMENT_MM`` the confidence is halved and the disagreement is written into the
notes, so that the SR flags the result for review. The network never replaces the
anatomy's answer: on real CT it can be confidently wrong (see weights/README.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from l3node.analysis.locate_l3 import L3Location
from l3node.analysis.volume import Volume
from l3node.logs import get_logger

log = get_logger(__name__)

DISAGREEMENT_MM = 10.0
"""The paper's technical-success distance: beyond it two answers name different slices."""


def weigh_second_opinion(l3: L3Location, volume: Volume, weights_dir: Path, device: str = "auto") -> L3Location:
    """Compare the anatomy's L3 with the network's and adjust confidence and notes.

    Returns ``l3`` unchanged when it names no slice; with a note when the network
    cannot be loaded (the node keeps working without it).
    """
    if l3.z_mm is None:
        return l3
    from l3node.analysis.neural import ModelError, predict_l3_z  # torch is imported only here

    try:
        neural = predict_l3_z(volume, folder=Path(weights_dir) / "l3_mip", device=device)
    except ModelError as exc:
        log.warning("l3_network_unavailable", error=str(exc))
        return dataclasses.replace(l3, notes=(*l3.notes, f"L3 network not available: {exc}"))
    delta_mm = abs(neural.z_mm - l3.z_mm)
    agrees = delta_mm <= DISAGREEMENT_MM
    log.info("l3_second_opinion", delta_mm=round(delta_mm, 1), agrees=agrees)
    note = (f"L3 network {'agrees' if agrees else 'disagrees'}: network z = {neural.z_mm:.1f} mm "
            f"(difference {delta_mm:.1f} mm, network confidence {neural.confidence:.2f})")
    return dataclasses.replace(
        l3,
        confidence=l3.confidence if agrees else l3.confidence * 0.5,
        method=f"{l3.method}; second opinion: L3 network {'agrees' if agrees else 'disagrees'}",
        notes=(*l3.notes, note),
    )
