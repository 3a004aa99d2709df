"""Shared pieces of the node tests: small CT instances, a storing SCU, a receiving "PACS" SCP,
and a small real analysis callable (a stand-in for the pipeline only, never for the network).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts

from l3node.config import Config, parse_config
from l3node.pipeline import StudyOutcome

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(root: Path, port: int, **sections) -> Config:
    """A node config on loopback with short timings; ``sections`` override whole sections."""
    data = {
        "node": {"ae_title": "L3NODE", "bind_address": "127.0.0.1", "port": port, "network_timeout_s": 5},
        "storage": {"root": str(root)},
        "assembly": {"quiet_period_s": 0.3, "max_wait_s": 30},
        "sending": {"max_attempts": 5, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "logging": {"format": "console", "level": "WARNING"},
    }
    for key, value in sections.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    return parse_config(data)


def make_ct(study_uid: str, series_uid: str, k: int, size: int = 64, **attrs) -> Dataset:
    """One small axial CT slice (int16 HU-like pixels) with file meta, explicit VR LE."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.511.3.1"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-ID-1"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "Abdomen 3.0 Br38"
    ds.ConvolutionKernel = "Br38f"
    ds.SeriesNumber = 2
    ds.InstanceNumber = k + 1
    ds.SliceThickness = 3.0
    ds.PixelSpacing = [0.8, 0.8]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-25.6, -25.6, -100.0 + 3.0 * k]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    rng = np.random.default_rng(k)
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def make_series(study_uid: str, n: int, series_uid: str | None = None, **attrs) -> list[Dataset]:
    series_uid = series_uid or generate_uid()
    return [make_ct(study_uid, series_uid, k, **attrs) for k in range(n)]


def store(port: int, datasets: list[Dataset], calling_ae: str = "PACS", called_ae: str = "L3NODE", contexts=None) -> list[int | None]:
    """C-STORE datasets over one association; returns each status (None: no answer).

    Raises
    ------
    ConnectionError
        If the association is not established (rejected, refused).
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    if contexts is None:
        # One context per (SOP class, transfer syntax): the SCP accepts one syntax per context.
        for sop, ts in dict.fromkeys((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets):
            ae.add_requested_context(sop, [ts])
    else:
        for sop, ts in contexts:
            ae.add_requested_context(sop, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError("rejected" if assoc.is_rejected else "no association")
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


class Pacs:
    """A receiving SCP standing in for the hospital PACS (a real pynetdicom SCP).

    ``received`` counts each SOP instance UID received; ``delay_s`` holds each
    C-STORE answer back (to kill a sender mid-send).
    """

    def __init__(self, port: int, ae_title: str = "PACS", delay_s: float = 0.0, log_path: Path | None = None):
        self.port = port
        self.ae_title = ae_title
        self.delay_s = delay_s
        self.log_path = log_path
        self.received: Counter[str] = Counter()
        self.associations = 0
        self.stores_begun = 0
        self.stores_done = 0
        self.datasets: dict[str, Dataset] = {}
        self._lock = threading.Lock()
        self.server = None

    def _on_store(self, event) -> int:
        with self._lock:
            self.stores_begun += 1
        ds = event.dataset
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] += 1
            self.datasets[str(ds.SOPInstanceUID)] = ds
            self.stores_done += 1
            if self.log_path:
                with open(self.log_path, "a") as handle:
                    handle.write(f"{ds.SOPInstanceUID} {ds.StudyInstanceUID}\n")
        return 0x0000

    def _on_accepted(self, event) -> None:
        with self._lock:
            self.associations += 1

    def start(self) -> "Pacs":
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted)]
        )
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server = None


def secondary_capture_of(source: Path, out_dir: Path) -> Path:
    """A real DICOM object derived from a received slice: re-UIDed Secondary Capture, same study."""
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9903
    ds.SeriesDescription = "test overlay"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = out_dir / f"sc_{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def small_analysis(study_dir: Path, out_dir: Path, config: Config) -> StudyOutcome:
    """Stand-in for the pipeline: two SC objects from the first slice, results.json.

    Environment hooks for the kill -9 tests: ``L3NODE_TEST_MARKERS`` (a folder:
    ``started``/``finished`` lines are appended) and ``L3NODE_TEST_ANALYSE_S``
    (seconds to sleep, so the process can be killed mid-analysis).
    """
    markers = os.environ.get("L3NODE_TEST_MARKERS")
    files = sorted(study_dir.glob("*/*.dcm"))
    study_uid = study_dir.parent.name
    if markers:
        with open(Path(markers) / "started", "a") as handle:
            handle.write(f"{study_uid}\n")
    time.sleep(float(os.environ.get("L3NODE_TEST_ANALYSE_S", "0")))
    outputs = [secondary_capture_of(files[0], out_dir), secondary_capture_of(files[-1], out_dir)]
    (out_dir / "results.json").write_text(json.dumps({"status": "done", "instances": len(files)}))
    if markers:
        with open(Path(markers) / "finished", "a") as handle:
            handle.write(f"{study_uid} {' '.join(pydicom.dcmread(p).SOPInstanceUID for p in outputs)}\n")
    return StudyOutcome(
        status="done", reason="", output_files=outputs, results={"instances": len(files)},
        selected_series_uid=files[0].parent.name, timings_s={"test": 0.0},
    )


def wait_for(predicate, timeout_s: float = 20.0, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())
