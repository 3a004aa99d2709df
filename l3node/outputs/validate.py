"""Checking written objects with dciodvfy (Debian ``dicom3tools``), the reference IOD checker.

Used by the tests of every output and available to other tests and tools; the node itself
does not depend on dciodvfy being installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom

DCIODVFY = "dciodvfy"


@dataclass(frozen=True)
class DciodvfyReport:
    """dciodvfy's findings for one file, split by severity (each line as printed)."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str


def dciodvfy_available() -> bool:
    """Whether the ``dciodvfy`` executable is on PATH."""
    return shutil.which(DCIODVFY) is not None


def dciodvfy_report(path: str | Path, timeout_s: float = 60.0) -> DciodvfyReport:
    """Run dciodvfy on a DICOM file and classify its lines.

    Raises
    ------
    FileNotFoundError
        If dciodvfy is not installed or ``path`` does not exist.
    subprocess.TimeoutExpired
        If dciodvfy runs longer than ``timeout_s``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise FileNotFoundError("dciodvfy is not installed (Debian package dicom3tools)")
    done = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    output = done.stdout + done.stderr
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = tuple(line for line in lines if line.startswith("Error"))
    warnings = tuple(line for line in lines if line.startswith("Warning"))
    return DciodvfyReport(errors=errors, warnings=warnings, output=output)


def run_dciodvfy(path: str | Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file (empty list: valid).

    Raises
    ------
    FileNotFoundError
        If dciodvfy is not installed or ``path`` does not exist.
    """
    return list(dciodvfy_report(path).errors)


def dataset_bytes(dataset: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file in memory (preamble, meta header, body)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dciodvfy_dataset(dataset: pydicom.Dataset) -> DciodvfyReport:
    """Write ``dataset`` to a temporary Part 10 file and run dciodvfy on it.

    Raises
    ------
    FileNotFoundError
        If dciodvfy is not installed.
    """
    with tempfile.TemporaryDirectory(prefix="l3node-dciodvfy-") as tmp:
        path = Path(tmp) / "object.dcm"
        path.write_bytes(dataset_bytes(dataset))
        return dciodvfy_report(path)
