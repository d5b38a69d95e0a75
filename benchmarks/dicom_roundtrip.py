"""Round trip through a real PACS: a burst of N chest CRs sent with pynetdicom to ``pneumo dicom-listen``, which
forwards each SR and SC to Orthanc.

Starts Orthanc (Debian's binary, as the tests do) and the listener as its own process, both on free loopback
ports; sends N copies of the real chest CRs (new SOP Instance UIDs, one study) on one association; then polls
Orthanc until every source has its SR and SC there. Prints the time from the first send to the last result stored,
the per-image latency p50 / p99 (send of that instance -> both its results in Orthanc), and how many were lost.

    python benchmarks/dicom_roundtrip.py [-n 16] [--no-heatmaps] [--workers 2] [--time-limit 600]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc fixture's helper: one way to start Orthanc, not two
from orthanc import AET, Orthanc, free_port, skip_unless_orthanc  # noqa: E402

DICOM = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data")) / "dicom"
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


def sources(n: int) -> list[pydicom.Dataset]:
    """N chest CRs (the shared ones and pydicom-data's, in turn) with new instance UIDs in one new study."""
    paths = [DICOM / "RG1_J2KI.dcm", DICOM / "Issue44_Monochrome1-Jpeg.dcm"]
    extra = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    paths += [Path(extra)] if extra else []
    study = pydicom.uid.generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(paths[i % len(paths)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, pydicom.uid.generate_uid(entropy_srcs=[study, str(i)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.PatientID = "BENCH"  # one patient, so Orthanc files the study once
        out.append(ds)
    return out


def referenced(orthanc: Orthanc, instance_id: str) -> tuple[str, str | None]:
    """(SOP class, the source SOP Instance UID an SR / SC refers to)."""
    ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance_id)), stop_before_pixels=True)
    if "SourceImageSequence" in ds:
        return ds.SOPClassUID, ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    if "CurrentRequestedProcedureEvidenceSequence" in ds:
        ev = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        return ds.SOPClassUID, ev.ReferencedSOPInstanceUID
    return ds.SOPClassUID, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=16, help="instances in the burst")
    ap.add_argument("--workers", type=int, default=2, help="the listener's analysis workers")
    ap.add_argument("--no-heatmaps", action="store_true", help="SCs without the heat map (no PyTorch)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="give up after this many seconds")
    args = ap.parse_args()
    try:
        skip_unless_orthanc()
    except BaseException as exc:  # pytest's Skipped: the same reason, as a message
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pneumo-dicom-bench-"))
    listen_port = free_port()
    orthanc = Orthanc(work, {"pneumo": ("PNEUMO", listen_port)}).start()
    cmd = [sys.executable, "-m", "pneumo.cli", "dicom-listen", "--port", str(listen_port), "--workers",
           str(args.workers), "--forward", f"127.0.0.1:{orthanc.dicom_port}:{AET}"]  # fmt: skip
    cmd += ["--no-heatmaps"] if args.no_heatmaps else []
    log = (work / "listen.log").open("wb")
    listener = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while "listening as PNEUMO" not in (work / "listen.log").read_text():
            if listener.poll() is not None or time.monotonic() > deadline:
                print((work / "listen.log").read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        burst = sources(args.n)
        ae = AE(ae_title="BENCHSCU")
        for syntax in {str(d.file_meta.TransferSyntaxUID) for d in burst}:
            ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
        assoc = ae.associate("127.0.0.1", listen_port, ae_title="PNEUMO")
        assert assoc.is_established, "the listener refused the association"
        sent: dict[str, float] = {}
        statuses = []
        t0 = time.monotonic()
        for ds in burst:
            sent[ds.SOPInstanceUID] = time.monotonic()
            statuses.append(getattr(assoc.send_c_store(ds), "Status", None))
        assoc.release()
        send_done = time.monotonic() - t0
        arrived: dict[str, dict[str, float]] = {uid: {} for uid in sent}
        seen: set[str] = set()
        deadline = t0 + args.time_limit
        while time.monotonic() < deadline and not all(len(v) == 2 for v in arrived.values()):
            for inst in orthanc.http.get("/instances").json():
                if inst in seen:
                    continue
                seen.add(inst)
                sop_class, ref = referenced(orthanc, inst)
                if ref in arrived and sop_class in (SR_CLASS, SC_CLASS):
                    arrived[ref][sop_class] = time.monotonic()
            time.sleep(0.2)
        complete = {uid: max(v.values()) - sent[uid] for uid, v in arrived.items() if len(v) == 2}
        lost = args.n - len(complete)
        last = max((max(v.values()) for v in arrived.values() if v), default=float("nan")) - t0
        lat = np.array(sorted(complete.values()))
        n_sr = sum(SR_CLASS in v for v in arrived.values())
        n_sc = sum(SC_CLASS in v for v in arrived.values())
        heat = "without heat maps" if args.no_heatmaps else "with heat maps"
        print(f"{args.n} chest CRs -> pneumo dicom-listen ({args.workers} workers, {heat}) -> Orthanc")
        print(f"C-STORE statuses: {sorted({hex(s) if s is not None else 'none' for s in statuses})}; burst sent "
              f"in {send_done:.2f} s")  # fmt: skip
        print(f"first send -> last result stored in Orthanc: {last:.2f} s ({args.n / last:.2f} images/s)")
        if lat.size:
            print(f"per-image latency: p50 {np.percentile(lat, 50):.2f} s, p99 {np.percentile(lat, 99):.2f} s, "
                  f"max {lat.max():.2f} s")  # fmt: skip
        print(f"in Orthanc: {n_sr} SR + {n_sc} SC; lost: {lost}")
        return 0 if lost == 0 else 1
    finally:
        listener.terminate()
        try:
            listener.wait(timeout=30)
        except subprocess.TimeoutExpired:
            listener.kill()
        log.close()
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(main())
