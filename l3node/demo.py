"""`l3node demo`: a synthetic study through a real node and back, on loopback.

Starts a receiving PACS (a pynetdicom storage SCP writing to disk) and an l3node
service on free ports, writes a synthetic CT study with known anatomy, sends it
with C-STORE as a PACS would, waits for the SEG, SR and overlay to come back, and
prints the measurements (read from the returned SR) next to the phantom's truth.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import from_sitk
from l3node.config import Config, parse_config

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}
SR_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPacs:
    """A minimal receiving PACS: a storage SCP that writes every instance to ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS", port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.received: list[Path] = []
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(path)
        return 0x0000

    def start(self) -> "LocalPacs":
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def datasets(self) -> list[pydicom.Dataset]:
        with self._lock:
            paths = list(self.received)
        return [pydicom.dcmread(p) for p in paths]


def send_folder(folder: Path, port: int, called_ae: str, calling_ae: str = "DEMOMODALITY") -> int:
    """C-STORE every DICOM file in ``folder``; returns how many were stored with success.

    Raises
    ------
    ConnectionError
        If the node does not accept the association.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    datasets = [pydicom.dcmread(p) for p in files]
    ae = AE(ae_title=calling_ae)
    for ts in sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets}):
        ae.add_requested_context(str(datasets[0].SOPClassUID), ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"node at port {port} refused the association")
    stored = 0
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            stored += int(getattr(status, "Status", -1) == 0)
    finally:
        assoc.release()
    return stored


def sr_numbers(sr: pydicom.Dataset) -> dict[str, dict[str, float]]:
    """Numeric measurements of a TID 1500 report, by measurement group's tracking identifier.

    Returns ``{group: {concept meaning [+ derivation]: value}}``; values outside a
    group land under ``"report"``.
    """
    found: dict[str, dict[str, float]] = {}

    def walk(items, group: str) -> None:
        for item in items:
            current = group
            if item.ValueType == "CONTAINER":
                for child in getattr(item, "ContentSequence", []):
                    if child.ValueType == "TEXT" and child.ConceptNameCodeSequence[0].CodeValue == "112039":
                        current = str(child.TextValue)
            if item.ValueType == "NUM":
                name = item.ConceptNameCodeSequence[0].CodeMeaning
                for child in getattr(item, "ContentSequence", []):
                    if child.ValueType == "CODE" and child.ConceptNameCodeSequence[0].CodeValue == "121401":
                        name += f" ({child.ConceptCodeSequence[0].CodeMeaning})"
                value = float(item.MeasuredValueSequence[0].NumericValue)
                found.setdefault(current, {})[name] = value
            walk(getattr(item, "ContentSequence", []), current)

    walk(getattr(sr, "ContentSequence", []), "report")
    return found


def overlay_png(sc: pydicom.Dataset, path: Path) -> Path:
    """Save a secondary-capture overlay's pixels as a PNG for people without a viewer."""
    pixels = sc.pixel_array
    if pixels.ndim == 4:
        pixels = pixels[0]
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def demo_config(root: Path, node_port: int, pacs: LocalPacs) -> Config:
    """The built-in demo configuration: everything on loopback, short quiet period."""
    return parse_config({
        "node": {"ae_title": "L3NODE", "bind_address": "127.0.0.1", "port": node_port,
                 "allowed_calling_aes": ["DEMOMODALITY"]},
        "storage": {"root": str(root)},
        "assembly": {"quiet_period_s": 1.0, "max_wait_s": 120},
        "destinations": [{"name": "demo-pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
        "sending": {"max_attempts": 3, "backoff_initial_s": 0.5, "backoff_max_s": 2},
        "logging": {"format": "console", "level": "WARNING"},
    })


def run_demo(out: Path, variant: str = "normal", seed: int = 1, timeout_s: float = 300.0, matrix: int = 512) -> int:
    """Run the demo; returns 0 when results came back, 1 otherwise."""
    from l3node.logs import configure
    from l3node.phantom import main_phantom
    from l3node.service import Node

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configure(json=False, level="WARNING")
    print(f"1. writing a synthetic CT study (variant {variant}, seed {seed}) ...")
    study = main_phantom(variant, seed, out / "study", matrix=matrix, slice_thickness_mm=3.0,
                         scan_range="abdomen_pelvis")
    series_dir = _series_folder(study)
    truth = json.loads((study / "ground_truth.json").read_text())
    n_files = len(list(series_dir.glob("*.dcm")))

    pacs = LocalPacs(out / "pacs").start()
    config = demo_config(out / "var", free_port(), pacs)
    node = Node(config)
    node.start()
    try:
        print(f"2. node L3NODE listening on 127.0.0.1:{config.node.port}; PACS DEMOPACS on :{pacs.port}")
        start = time.monotonic()
        stored = send_folder(series_dir, config.node.port, "L3NODE")
        print(f"3. sent {stored}/{n_files} instances with C-STORE; waiting for results ...")
        results = _wait_for_results(pacs, timeout_s)
        elapsed = time.monotonic() - start
    finally:
        node.stop()
        pacs.stop()
    if results is None:
        print("   no result came back in time; see `l3node status` and the logs")
        return 1
    print(f"4. {len(results)} objects came back in {elapsed:.1f} s (quiet period 1 s included):")
    for ds in results:
        print(f"   - {ds.SOPClassUID.name:45s} series {ds.SeriesNumber}: {ds.SeriesDescription}")
    measured = _measured_slice(out / "var", series_dir)
    _print_l3(out / "var", truth, measured)
    _print_table(results, truth, _truth_areas_at(study, measured))
    sc = next((ds for ds in results if ds.SOPClassUID in SC_SOP_CLASSES), None)
    if sc is not None:
        print(f"   overlay image: {overlay_png(sc, out / 'overlay.png')}")
    print(f"   results on disk: {out / 'var'}; received objects: {pacs.folder}")
    return 0


def _series_folder(study: Path) -> Path:
    dicom = [p for p in study.rglob("*.dcm")]
    if not dicom:
        raise FileNotFoundError(f"no DICOM files written under {study}")
    return dicom[0].parent


def _wait_for_results(pacs: LocalPacs, timeout_s: float) -> list[pydicom.Dataset] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        datasets = pacs.datasets()
        classes = {str(ds.SOPClassUID) for ds in datasets}
        if SEG_SOP_CLASS in classes and classes & SR_SOP_CLASSES and classes & SC_SOP_CLASSES:
            return datasets
        if any(_is_declined(ds) for ds in datasets):
            return datasets
        time.sleep(0.2)
    return None


def _is_declined(ds: pydicom.Dataset) -> bool:
    return str(ds.SOPClassUID) in SR_SOP_CLASSES and "declined" in str(getattr(ds, "SeriesDescription", "")).lower()


def _latest_l3(storage_root: Path) -> dict | None:
    found = sorted(storage_root.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text())["l3"] if found else None


def _measured_slice(storage_root: Path, series_dir: Path) -> float | None:
    """Patient z (mm) of the CT slice the node measured, from its SOP Instance UID."""
    l3 = _latest_l3(storage_root)
    uid = l3.get("sop_instance_uid") if l3 else None
    if not uid:
        return None
    for path in series_dir.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPInstanceUID == uid:
            return float(ds.ImagePositionPatient[2])
    return None


def _truth_areas_at(study: Path, z_mm: float | None) -> dict[str, float] | None:
    """The phantom's exact tissue areas (cm²) on the slice at ``z_mm`` (``tissues.nii.gz``).

    The node measures the slice nearest its own endplate estimate, which may be the
    neighbour of the truth's L3 slice; areas change from slice to slice (VAT by several
    cm² per 3 mm), so the comparison is made on the slice that was measured.
    """
    path = study / "nifti" / "tissues.nii.gz"
    if z_mm is None or not path.exists():
        return None
    labels = from_sitk(sitk.ReadImage(str(path)), hu=False)
    plane = labels.hu[labels.slice_index_at(z_mm)]
    cm2 = labels.pixel_area_mm2 / 100.0
    return {tissue.key: float((plane == tissue).sum()) * cm2 for tissue in Tissue}


def _print_l3(storage_root: Path, truth: dict, measured_z_mm: float | None) -> None:
    """The node's L3 finding (from its results.json) next to the phantom's truth."""
    l3 = _latest_l3(storage_root)
    if l3 is None:
        return
    print()
    print(f"   L3 inferior endplate: found z = {l3['z_mm']} mm ({l3['status']}, confidence {l3['confidence']}, "
          f"variant {l3['variant']}); truth z = {truth.get('l3_inferior_endplate_z_mm')} mm "
          f"(variant {truth.get('variant')})")
    print(f"   how: {l3['method']}")
    if measured_z_mm is not None:
        print(f"   measured on the slice at z = {measured_z_mm:.2f} mm; truth areas below are of that same slice")


def _print_table(results: list[pydicom.Dataset], truth: dict, truth_areas: dict[str, float] | None = None) -> None:
    sr = next((ds for ds in results if ds.SOPClassUID in SR_SOP_CLASSES), None)
    if sr is None:
        return
    numbers = sr_numbers(sr)
    print()
    print(f"   {'tissue':38s} {'area cm2':>9s} {'truth cm2':>10s} {'mean HU':>8s}")
    truth_areas = truth_areas if truth_areas is not None else truth.get("areas_cm2", {})
    keys = {"skeletal muscle": "skeletal_muscle", "intermuscular": "imat", "visceral": "vat", "subcutaneous": "sat"}
    for group, values in numbers.items():
        area = next((v for k, v in values.items() if k.lower().startswith("area")), None)
        mean = next((v for k, v in values.items() if "mean" in k.lower()), None)
        key = next((v for k, v in keys.items() if k in group.lower()), None)
        if area is None:
            continue
        expected = truth_areas.get(key) if key else None
        print(f"   {group[:38]:38s} {area:9.2f} {expected if expected is not None else float('nan'):10.2f} "
              f"{mean if mean is not None else float('nan'):8.1f}")
    for group, values in numbers.items():
        for name, value in values.items():
            if "index" in name.lower():
                print(f"   {name}: {value:.2f}")
    print()
