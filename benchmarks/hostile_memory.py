"""Peak memory of the hostile inputs of issue 25 (not a test): each case runs in its own process and the peak
resident set size (ru_maxrss of that process, or the node's VmHWM) is printed with the time and the outcome.

    python benchmarks/hostile_memory.py            # all cases
    python benchmarks/hostile_memory.py j2k npz    # some of them

Cases:
- ``j2k``   ``pneumo predict`` on a 5 KB DICOM whose header says 512 x 512 and whose JPEG 2000 codestream's SIZ
            marker says 20000 x 20000 (before the fix: 2.5 GB in predict);
- ``jpeg``  the same with a baseline JPEG's SOF marker;
- ``npz``   ``pneumo info`` on the bundled model with its arrays.npz replaced by one holding 1 GiB of zeros
            (about 1 MB on disk; before the fix: 1.1 GB);
- ``node``  ``pneumo dicom-listen`` sent one 400 MB uncompressed CR (before the fix: +1.1 GB, 971 MB kept
            after), then an ordinary one: the node's peak RSS and its RSS at the end.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_hardening_inputs import compressed_dicom, j2k_bomb_dicom, jpeg_baseline, npz_bomb_model  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, seconds, last line of output) of ``cmd`` in its own process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    out = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - t0, (lines[-1] if lines else "")[:150]


def _report(case: str, code: int, peak: float, seconds: float, note: str) -> None:
    print(f"{case:<6} exit {code:<3} peak RSS {peak:8.1f} MB  {seconds:6.2f} s  {note}")


def case_image(tmp: Path, case: str) -> None:
    data = j2k_bomb_dicom() if case == "j2k" else compressed_dicom(
        jpeg_baseline(64, (20000, 20000)), "1.2.840.10008.1.2.4.50", 512, 512)  # fmt: skip
    path = tmp / f"{case}-bomb.dcm"
    path.write_bytes(data)
    code, peak, seconds, line = run_measured([sys.executable, "-m", "pneumo.cli", "predict", str(path), "-o",
                                              str(tmp / f"{case}.csv")])  # fmt: skip
    row = (tmp / f"{case}.csv").read_text().splitlines()[-1] if (tmp / f"{case}.csv").exists() else line
    _report(case, code, peak, seconds, f"{len(data) / 1024:.0f} KB file; {row[:110]}")


def case_npz(tmp: Path) -> None:
    base = REPO / "src" / "pneumo" / "assets" / "default.pneumo"
    bomb = npz_bomb_model(base, tmp / "bomb.pneumo", gib=1.0)
    code, peak, seconds, line = run_measured([sys.executable, "-m", "pneumo.cli", "info", "--model", str(bomb)])
    _report("npz", code, peak, seconds, f"{bomb.stat().st_size / 2**20:.1f} MB file; {line}")


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def case_node(tmp: Path) -> None:
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    sys.path.insert(0, str(REPO / "tests"))
    from orthanc import free_port

    port, out = free_port(), tmp / "node-out"
    log = tmp / "node.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pneumo.cli", "dicom-listen", "--port", str(port), "--out",
                                 str(out), "--no-heatmaps"], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "listening as" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        idle = _vm(proc.pid, "VmRSS")

        def cr(rows: int, cols: int) -> Dataset:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.Modality, ds.BodyPartExamined, ds.PatientID = "CR", "CHEST", "BENCH"
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            rng = np.random.default_rng(0)
            ds.PixelData = rng.integers(0, 4096, (rows, cols), dtype=np.uint16).tobytes()
            return ds

        ae = AE(ae_title="BENCH")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        big = cr(10000, 20000)  # 400 MB of pixels
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
        status = assoc.send_c_store(big).Status
        del big
        small = cr(1024, 1024)
        status_small = assoc.send_c_store(small).Status
        assoc.release()
        seconds = time.perf_counter() - t0
        time.sleep(3)  # the small one is analysed
        peak, after = _vm(proc.pid, "VmHWM"), _vm(proc.pid, "VmRSS")
        _report("node", 0, peak, seconds, f"400 MB CR -> 0x{status:04X}, 2 MB CR -> 0x{status_small:04X}; RSS idle "
                f"{idle:.0f} MB, after {after:.0f} MB (+{after - idle:.0f} MB kept)")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
    _ = pydicom, io


CASES = {"j2k": lambda t: case_image(t, "j2k"), "jpeg": lambda t: case_image(t, "jpeg"), "npz": case_npz,
         "node": case_node}  # fmt: skip


def main(argv: list[str]) -> None:
    chosen = argv or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            CASES[name](Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
