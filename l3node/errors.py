"""Errors and expected outcomes.

Failures (a bug, a disk error) raise :class:`L3NodeError` subclasses. Expected outcomes
that end a study without results (no eligible series, L3 outside the scan) are
:class:`StudyDeclined` with a stable machine-readable ``code`` and a human ``detail``:
they are recorded and, if configured, reported to the PACS, never treated as crashes.
"""

from __future__ import annotations


class L3NodeError(Exception):
    """Base class of every error raised on purpose by l3node."""


class ConfigError(L3NodeError):
    """The configuration file is invalid; ``problems`` lists each with its path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class StudyDeclined(L3NodeError):
    """The study cannot be analysed, for a reason that is not a failure of the node."""

    def __init__(self, code: str, detail: str):
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class SeriesRejected(StudyDeclined):
    """One series is unusable (geometry, content); another series may still be used."""


class AnalysisFailed(L3NodeError):
    """An analysis step failed on input it should have handled."""
