"""Structured logging: JSON lines for services, readable console for people.

Events are keywords (``series_selected``, ``send_failed``) with stable keys
(``study_uid``, ``series_uid``, ``calling_ae``, ``dest``, ``elapsed_s``). Patient
names and IDs are never logged; :func:`_drop_patient_identifiers` removes them
should a caller pass one by mistake.
"""

from __future__ import annotations

import logging
import sys

import structlog

_FORBIDDEN = {"PatientName", "PatientID", "patient_name", "patient_id", "PatientBirthDate"}


def _drop_patient_identifiers(_logger, _method, event_dict):
    for key in _FORBIDDEN & event_dict.keys():
        event_dict[key] = "<removed>"
    return event_dict


class _StderrLogger:
    """Writes each rendered event to the *current* ``sys.stderr``.

    structlog's PrintLogger binds the stream at configuration time; a stream that
    is later replaced and closed (test capture, daemonising) would then make every
    log call raise inside worker threads. A log line must never stop the node.
    """

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (ValueError, OSError):
            pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure(json: bool = True, level: str = "INFO") -> None:
    """Configure structlog once for the process."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_patient_identifiers,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs through stdlib logging; keep it quiet unless asked.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)


def get_logger(name: str):
    """A bound structlog logger for ``name`` (the module)."""
    return structlog.get_logger(name)
