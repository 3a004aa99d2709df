"""Study completeness: a quiet period with an upper bound.

DIMSE has no "end of study" message, so a round of a study is complete when no
instance of it arrived for ``assembly.quiet_period_s`` seconds, or at the latest
``assembly.max_wait_s`` after its first instance (a PACS that trickles instances
forever still gets an answer). Completeness is judged per study, not per series:
the series of one study arrive interleaved or back to back from a router, and the
selection needs all of them at once. Instances arriving after a round was claimed
open the next round (see :mod:`l3node.node.audit`).

Geometric checks (missing slices, spacing) belong to the pipeline
(``l3node.analysis.volume``), not here.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from l3node.config import AssemblyConfig
from l3node.logs import get_logger
from l3node.node.audit import Audit, StudyRef

log = get_logger(__name__)


def completeness(first_at: float, last_at: float, now: float, assembly: AssemblyConfig) -> str | None:
    """Why a round counts as complete at ``now``, or None while it is still receiving.

    Returns ``"quiet_period"`` when nothing arrived for ``quiet_period_s``, else
    ``"max_wait"`` when ``max_wait_s`` passed since the first instance.
    """
    if now - last_at >= assembly.quiet_period_s:
        return "quiet_period"
    if now - first_at >= assembly.max_wait_s:
        return "max_wait"
    return None


def promote_ready(audit: Audit, assembly: AssemblyConfig, now: float | None = None) -> list[StudyRef]:
    """Move every complete ``receiving`` round to ``ready``; returns those moved."""
    now = time.time() if now is None else now
    moved = []
    for row in audit.receiving_rows():
        why = completeness(row["first_instance_at"], row["last_instance_at"], now, assembly)
        if why and audit.mark_ready(row["id"], why, now):
            moved.append(StudyRef(row["id"], row["study_uid"], row["round"]))
            log.info(
                "study_ready",
                study_uid=row["study_uid"],
                round=row["round"],
                why=why,
                instances=row["instances_received"],
                waited_s=round(now - row["first_instance_at"], 3),
            )
    return moved


def count_instances(study_dir: Path) -> tuple[int, int]:
    """(instances, series) stored under a study folder (``<series>/<sop>.dcm``)."""
    per_series = Counter(p.parent.name for p in study_dir.glob("*/*.dcm"))
    return sum(per_series.values()), len(per_series)
