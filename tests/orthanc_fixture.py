"""A real Orthanc (Debian package) on loopback, configured from deploy/orthanc/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import requests

from l3node.demo import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "orthanc"
ORTHANC = shutil.which("Orthanc")


class Orthanc:
    """Orthanc started from the deploy configuration with test ports and folders."""

    def __init__(self, folder: Path, node_port: int, stable_age_s: int = 2):
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = json.loads((DEPLOY / "orthanc.json").read_text())
        config.update(
            StorageDirectory=str(folder / "db"),
            IndexDirectory=str(folder / "db"),
            DicomPort=self.dicom_port,
            HttpPort=self.http_port,
            StableAge=stable_age_s,
            LuaScripts=[str(DEPLOY / "l3node-route.lua")],
            Plugins=[p for p in config.get("Plugins", []) if Path(p).exists()],
        )
        config["DicomModalities"]["l3node"]["Port"] = node_port
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> "Orthanc":
        # TCP_NODELAY: without it each instance waits ~48 ms for a delayed ACK.
        env = dict(os.environ, TCP_NODELAY="1")
        self.log = open(self.folder / "orthanc.log", "w")
        self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start; log:\n{(self.folder / 'orthanc.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def upload(self, files: list[Path]) -> None:
        """Store instances through the REST API, as a modality's images arrive in a PACS."""
        with requests.Session() as session:
            for path in files:
                response = session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
                response.raise_for_status()

    def series_in_study(self, study_uid: str) -> list[dict]:
        found = requests.post(f"{self.url}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
                              timeout=10).json()
        if not found:
            return []
        return requests.get(f"{self.url}/studies/{found[0]}/series", timeout=10).json()

    def instances(self, series_id: str) -> list[pydicom.Dataset]:
        from io import BytesIO

        items = requests.get(f"{self.url}/series/{series_id}/instances", timeout=10).json()
        return [pydicom.dcmread(BytesIO(requests.get(f"{self.url}/instances/{i['ID']}/file", timeout=30).content))
                for i in items]
