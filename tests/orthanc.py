"""A real Orthanc PACS for the DICOM tests: Debian's ``Orthanc`` binary on free loopback ports, a temporary storage
folder, a generated JSON configuration with the DICOMweb plugin and a modality entry for the Pneumo listener.

Tests that use it skip with the reason when the binary (or the plugin) is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ORTHANC = os.environ.get("PNEUMO_ORTHANC", shutil.which("Orthanc") or "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_unless_orthanc() -> None:
    if not (Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK)):
        pytest.skip(f"no Orthanc binary at {ORTHANC}: apt-get install orthanc orthanc-dicomweb to run the PACS tests")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"no Orthanc DICOMweb plugin at {DICOMWEB_PLUGIN}: apt-get install orthanc-dicomweb")


class Orthanc:
    """One Orthanc process; ``modalities`` maps a name to (AET, port) on 127.0.0.1."""

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, int]]):
        self.workdir = workdir
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pneumo-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in modalities.items()},
            "DicomScuTimeout": 30,
            "StableAge": 1,
            "LogExportedResources": False,
        }
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = workdir / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self, timeout: float = 30.0) -> Orthanc:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.http.get("/system").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # --- REST helpers ---

    def upload(self, path: Path) -> dict:
        """POST /instances; returns Orthanc's answer (ID, ParentStudy, Status...)."""
        r = self.http.post("/instances", content=Path(path).read_bytes())
        r.raise_for_status()
        return r.json()

    def store_to(self, modality: str, resources: list[str]) -> dict:
        """Orthanc C-STOREs the given instances / studies to a configured modality (synchronously)."""
        r = self.http.post(f"/modalities/{modality}/store", json={"Resources": resources, "Synchronous": True})
        r.raise_for_status()
        return r.json()

    def study_instances(self, study_id: str) -> list[dict]:
        r = self.http.get(f"/studies/{study_id}/instances", params={"expand": ""})
        r.raise_for_status()
        return r.json()

    def instance_file(self, instance_id: str) -> bytes:
        r = self.http.get(f"/instances/{instance_id}/file")
        r.raise_for_status()
        return r.content

    def instance_tags(self, instance_id: str) -> dict:
        r = self.http.get(f"/instances/{instance_id}/simplified-tags")
        r.raise_for_status()
        return r.json()
