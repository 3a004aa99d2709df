"""Study completeness by quiet period with an upper bound, and analysis rounds."""

from __future__ import annotations

import pytest

from l3node.config import AssemblyConfig
from l3node.node.assemble import completeness, promote_ready
from l3node.node.audit import Audit
from l3node.node.db import Database

ASSEMBLY = AssemblyConfig(quiet_period_s=10, max_wait_s=60)
STUDY = "1.2.826.0.1.3680043.10.511.8"


@pytest.fixture
def audit(tmp_path):
    db = Database(tmp_path / "audit.db")
    yield Audit(db)
    db.close()


def test_completeness_rule():
    assert completeness(first_at=0, last_at=5, now=14.9, assembly=ASSEMBLY) is None
    assert completeness(first_at=0, last_at=5, now=15, assembly=ASSEMBLY) == "quiet_period"
    # Instances every 5 s forever: the upper bound ends the wait.
    assert completeness(first_at=0, last_at=59, now=59.5, assembly=ASSEMBLY) is None
    assert completeness(first_at=0, last_at=59, now=60, assembly=ASSEMBLY) == "max_wait"


def test_quiet_period_promotes_once(audit):
    for t in (100.0, 101.0, 102.0):
        audit.note_instance(STUDY, "PACS", now=t)
    assert promote_ready(audit, ASSEMBLY, now=111.0) == []
    (ref,) = promote_ready(audit, ASSEMBLY, now=112.0)
    record = audit.get(ref.id)
    assert record["state"] == "ready" and record["ready_reason"] == "quiet_period" and record["instances_received"] == 3
    assert promote_ready(audit, ASSEMBLY, now=200.0) == []


def test_trickling_study_bounded_by_max_wait(audit):
    t = 0.0
    while t < 60:
        audit.note_instance(STUDY, "PACS", now=t)
        assert promote_ready(audit, ASSEMBLY, now=t + 1) == []
        t += 5
    (ref,) = promote_ready(audit, ASSEMBLY, now=60.0)
    assert audit.get(ref.id)["ready_reason"] == "max_wait"


def test_instance_for_ready_study_restarts_quiet_period(audit):
    ref = audit.note_instance(STUDY, "PACS", now=0.0)
    promote_ready(audit, ASSEMBLY, now=10.0)
    assert audit.get(ref.id)["state"] == "ready"
    again = audit.note_instance(STUDY, "PACS", now=11.0)
    assert again == ref and audit.get(ref.id)["state"] == "receiving"
    assert promote_ready(audit, ASSEMBLY, now=20.0) == []
    assert promote_ready(audit, ASSEMBLY, now=21.0) == [ref]


def test_instance_after_claim_opens_a_new_round(audit):
    first = audit.note_instance(STUDY, "PACS", now=0.0)
    promote_ready(audit, ASSEMBLY, now=10.0)
    audit.start_analysis(first.id, instances=1, series_count=1)
    late = audit.note_instance(STUDY, "PACS", now=12.0)
    assert (late.study_uid, late.round) == (STUDY, 1) and late.id != first.id
    assert [r["state"] for r in audit.studies(STUDY)] == ["analysing", "receiving"]
