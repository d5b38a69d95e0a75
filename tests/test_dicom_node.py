"""The DICOM node against a real PACS: Orthanc sends chest CRs to ``pneumo dicom-listen``, which sends the SR and
SC back into the same study; the same through DICOMweb; dcmtk's ``storescu`` as a second client; bad input over
the network (no pixel data, a CT slice, a truncated data set, an association dropped mid-transfer)."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the 'dicom' extra is not installed")
import highdicom as hd
import pydicom
import pydicom.data
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from orthanc import AET, Orthanc, free_port, skip_unless_orthanc
from pneumo.cli import main
from pneumo.dicom.dicomweb import analyse_study
from pneumo.dicom.instance import DicomAnalyser
from pneumo.dicom.node import Destination, Listener
from pneumo.inference import Predictor

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"
REPO = Path(__file__).resolve().parents[1]


def _chest_files(dicom_dir: Path) -> list[Path]:
    """The real chest CRs: the shared ones and pydicom-data's (one per SOP instance: Orthanc keeps one copy)."""
    files = [dicom_dir / "RG1_J2KI.dcm", dicom_dir / "Issue44_Monochrome1-Jpeg.dcm"]
    seen = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = pydicom.data.get_testdata_file(name, download=False)
        if path and pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID not in seen:
            files.append(Path(path))
            seen.add(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return files


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, predictor):
    """Orthanc and an in-process listener (real pynetdicom server) that forwards to it, each on free ports."""
    skip_unless_orthanc()
    listen_port = free_port()
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), {"pneumo": ("PNEUMO", listen_port)}).start()
    # The heat map is not under test here (tests/test_dicom_out.py has it); without it no PyTorch import.
    analyser = DicomAnalyser(predictor, heatmaps=False)
    listener = Listener(analyser, port=listen_port, forward=Destination("127.0.0.1", orthanc.dicom_port, AET),
                        out_dir=tmp_path_factory.mktemp("node-out")).start()  # fmt: skip
    yield orthanc, listener
    listener.stop()
    orthanc.stop()


def _probability(sr_bytes: bytes) -> tuple[float, str]:
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(sr_bytes)))
    group = hd.sr.MeasurementReport.from_sequence(sr.content).get_image_measurement_groups()[0]
    prob = next(float(m.value) for m in group.get_measurements() if m.name.meaning == "Probability")
    decision = next(e.value.meaning for e in group.get_qualitative_evaluations() if e.name.meaning == "Pneumonia")
    return prob, decision


def _results_in(orthanc: Orthanc, study_id: str, source_uid: str, timeout: float = 120) -> dict[str, bytes]:
    """The SR and SC that reference ``source_uid`` in an Orthanc study, once both are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for inst in orthanc.study_instances(study_id):
            tags = orthanc.instance_tags(inst["ID"])
            if tags.get("SOPClassUID") in (SR_CLASS, SC_CLASS):
                data = orthanc.instance_file(inst["ID"])
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                refs = (
                    [r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence]
                    if "SourceImageSequence" in ds
                    else [r.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                          for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
                )  # fmt: skip
                if source_uid in refs:
                    found["sr" if tags["SOPClassUID"] == SR_CLASS else "sc"] = data
        if len(found) == 2:
            return found
        time.sleep(0.5)
    raise AssertionError(f"the SR and SC of {source_uid} did not arrive in Orthanc within {timeout} s")


def test_orthanc_round_trip(pacs, dicom_dir, predictor):
    orthanc, listener = pacs
    for path in _chest_files(dicom_dir):
        up = orthanc.upload(path)
        source = pydicom.dcmread(path, stop_before_pixels=True)
        job = orthanc.store_to("pneumo", [up["ID"]])
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 1
        results = _results_in(orthanc, up["ParentStudy"], source.SOPInstanceUID)
        expected = predictor.predict_one(path, str(path))  # what `pneumo predict` gives for the file
        prob, decision = _probability(results["sr"])
        assert prob == pytest.approx(expected.probability, abs=5e-7), path.name  # DS written with 6 decimals
        assert decision == ("Present" if expected.prediction == "PNEUMONIA" else "Absent")
        sc = pydicom.dcmread(io.BytesIO(results["sc"]))
        assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.shape[2] == 3
        for ds in (pydicom.dcmread(io.BytesIO(results["sr"])), sc):
            assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert listener.wait_idle(60)
    assert listener.counters.forward_failed == 0


def test_dicomweb_round_trip(pacs, dicom_dir, predictor, capsys):
    orthanc, _ = pacs
    path = dicom_dir / "Issue44_Monochrome1-Jpeg.dcm"
    src = pydicom.dcmread(path)
    # A study of its own (new UIDs), so the results counted here are this test's only.
    src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
    buf = io.BytesIO()
    src.save_as(buf, enforce_file_format=True)
    tmp = orthanc.workdir / "web-source.dcm"
    tmp.write_bytes(buf.getvalue())
    up = orthanc.upload(tmp)
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ct.StudyInstanceUID = src.StudyInstanceUID  # a CT in the same study is listed, skipped, not fetched
    ct_path = orthanc.workdir / "ct.dcm"
    ct.save_as(ct_path)
    orthanc.upload(ct_path)
    code = main(["dicomweb", "--url", orthanc.dicomweb_url, "--study", src.StudyInstanceUID, "--no-heatmaps"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    expected = predictor.predict_one(tmp, str(tmp))
    assert f"{src.SOPInstanceUID}  {expected.prediction}  P(pneumonia) {expected.probability:.3f}" in printed
    assert (
        f"{ct.SOPInstanceUID}  skipped: Modality CT" in printed and "1 analysed, 2 result instances stored" in printed
    )
    results = _results_in(orthanc, up["ParentStudy"], src.SOPInstanceUID, timeout=30)
    assert _probability(results["sr"])[0] == pytest.approx(expected.probability, abs=5e-7)
    # The library call underneath, without storing: the same probability as `pneumo predict` on the file.
    outcomes = analyse_study(
        orthanc.dicomweb_url, src.StudyInstanceUID, DicomAnalyser(predictor, heatmaps=False), store=False
    )
    by_uid = {o.sop_instance_uid: o for o in outcomes}
    assert by_uid[src.SOPInstanceUID].prediction.probability == pytest.approx(expected.probability, abs=1e-9)
    assert by_uid[ct.SOPInstanceUID].skipped and by_uid[ct.SOPInstanceUID].prediction is None


def _dcmtk_storescu() -> str:
    # dcmtk's, not the storescu script pynetdicom installs into the environment's bin/
    path = "/usr/bin/storescu"
    if not os.access(path, os.X_OK):
        pytest.skip(f"no dcmtk storescu at {path}: apt-get install dcmtk")
    return path


def _storescu(port: int, path: Path, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    storescu = _dcmtk_storescu()
    # storescu proposes uncompressed syntaxes unless told to propose the file's own compressed one
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    flag = {pydicom.uid.JPEGBaseline8Bit: "-xy", pydicom.uid.JPEG2000: "-xw", pydicom.uid.JPEG2000Lossless: "-xv"}
    cmd = [storescu, "-aet", aet, "-aec", "PNEUMO", *([flag[syntax]] if syntax in flag else []), "127.0.0.1",
           str(port), str(path)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_storescu_as_a_second_client(pacs, dicom_dir):
    _, listener = pacs
    before = listener.counters.analysed
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False) or dicom_dir / "RG1_J2KI.dcm"
    run = _storescu(listener.port, Path(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert listener.wait_idle(120)
    assert listener.counters.analysed == before + 1
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert (listener.out_dir / f"{uid}.sr.dcm").is_file() and (listener.out_dir / f"{uid}.sc.dcm").is_file()


# --- bad input over the network ---


def _store(port: int, ds_or_path, aet: str = "TESTSCU", syntaxes=None):
    """One C-STORE with pynetdicom; returns the status (None when there was no answer)."""
    ae = AE(ae_title=aet)
    for cx in StoragePresentationContexts:
        ae.add_requested_context(cx.abstract_syntax, syntaxes or ALL_TRANSFER_SYNTAXES[:4])
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds_or_path)
        return getattr(status, "Status", None)
    finally:
        assoc.release()


def _echo(port: int) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    assert assoc.is_established, "the listener no longer accepts associations"
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def _uncompressed_chest() -> pydicom.Dataset:
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data has no RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_bad_input_is_refused_with_a_status_and_the_listener_keeps_serving(pacs, tmp_path, caplog):
    _, listener = pacs
    port = listener.port
    caplog.set_level(logging.INFO, logger="pneumo.dicom")
    no_pixels = _uncompressed_chest()
    del no_pixels.PixelData
    assert _store(port, no_pixels) == 0xA900
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert _store(port, ct) == 0x0122
    foot = _uncompressed_chest()
    foot.BodyPartExamined = "FOOT"
    assert _store(port, foot) == 0xC001
    # A truncated data set, sent as raw bytes (pynetdicom's chunked mode does not decode the file first).
    from pynetdicom import _config

    full = tmp_path / "full.dcm"
    _uncompressed_chest().save_as(full, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[:4000])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assert _store(port, cut, syntaxes=[pydicom.uid.ExplicitVRLittleEndian]) == 0xC000
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    # An association that drops mid-transfer: a P-DATA-TF PDU announced at 1 MB, 100 bytes sent, socket closed.
    _drop_mid_transfer(port)
    assert _echo(port) == 0x0000
    ok = _uncompressed_chest()
    assert _store(port, ok) == 0x0000
    assert listener.wait_idle(120)
    text = caplog.text
    for uid, status in ((no_pixels.SOPInstanceUID, "0xA900"), (ct.SOPInstanceUID, "0x0122"),
                        (foot.SOPInstanceUID, "0xC001")):  # fmt: skip
        assert f"refused {uid}" in text and status in text
    assert "0xC000" in text and "damaged DICOM data set" in text
    assert f"analysed {ok.SOPInstanceUID}" in text
    assert "association from TESTSCU@127.0.0.1 aborted" in text  # the dropped one
    # Logs carry UIDs, never the patient's name.
    assert str(ok.PatientName) not in text and "CompressedSamples" not in text


def _drop_mid_transfer(port: int) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    # PDU type 0x04 (P-DATA-TF), reserved byte, length 1 MB; then only 100 bytes of it.
    sock.sendall(struct.pack(">BBL", 0x04, 0x00, 1 << 20) + b"\x00" * 100)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assoc.kill()


def test_calling_ae_titles_are_enforced(predictor, tmp_path):
    listener = Listener(DicomAnalyser(predictor, heatmaps=False), port=0, out_dir=tmp_path,
                        calling_ae_titles=["ORTHANC"]).start()  # fmt: skip
    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PNEUMO")
        assert assoc.is_rejected
        ae = AE(ae_title="ORTHANC")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PNEUMO")
        assert assoc.is_established
        assoc.release()
    finally:
        listener.stop()


def test_queue_full_answers_out_of_resources(predictor, tmp_path):
    """With every worker busy and the queue full, the next instance gets A700 (retry later), not a crash."""
    import threading

    gate = threading.Event()
    analyser = DicomAnalyser(predictor, heatmaps=False)
    slow = analyser.analyse

    def blocked(*a, **kw):
        gate.wait(60)
        return slow(*a, **kw)

    analyser.analyse = blocked
    listener = Listener(analyser, port=0, out_dir=tmp_path, workers=1, queue_size=1).start()
    try:
        statuses = [_store(listener.port, _uncompressed_chest()) for _ in range(3)]
        assert statuses == [0x0000, 0x0000, 0xA700]  # one analysing, one queued, one refused
    finally:
        gate.set()
        listener.stop(timeout=120)
    assert listener.counters.analysed == 2


def test_dicom_listen_command_with_storescu(dicom_dir, tmp_path):
    """``pneumo dicom-listen`` as its own process, fed by dcmtk's storescu; its log names no patient."""
    _dcmtk_storescu()
    port, out = free_port(), tmp_path / "out"
    cmd = [sys.executable, "-m", "pneumo.cli", "dicom-listen", "--port", str(port), "--out", str(out),
           "--no-heatmaps", "--calling-aet", "STORESCU"]  # fmt: skip
    log = tmp_path / "listen.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while "listening as PNEUMO" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        path = dicom_dir / "Issue44_Monochrome1-Jpeg.dcm"
        run = _storescu(port, path)
        assert run.returncode == 0, run.stdout + run.stderr
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        deadline = time.monotonic() + 120
        while not (out / f"{uid}.sc.dcm").is_file() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert (out / f"{uid}.sr.dcm").is_file() and (out / f"{uid}.sc.dcm").is_file(), log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"analysed {uid}" in text
    name = str(pydicom.dcmread(path, stop_before_pixels=True).PatientName)
    assert name == "Patient^Anonymous" and name not in text and "Anonymous" not in text


# --- issue 25: hostile peers (no Orthanc needed: the real pynetdicom peer on loopback) ---


def _synthetic_cr(seed: int = 0, size: int = 128, **attrs) -> pydicom.Dataset:
    """A small chest CR (conftest's generated X-ray as 12-bit words) with every UID the results need."""
    import numpy as np

    from conftest import dicom_bytes, xray

    pixels = np.asarray(xray(seed, size), dtype=np.uint16) * 16
    uids = {"StudyInstanceUID": pydicom.uid.generate_uid(), "SeriesInstanceUID": pydicom.uid.generate_uid()}
    data = dicom_bytes(pixels, Modality="CR", BodyPartExamined="CHEST", PatientID="HOSTILE", PatientName="Doe^Jane",
                       **uids, **attrs)  # fmt: skip
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def node(predictor, tmp_path):
    """An in-process listener writing into tmp_path/out (real pynetdicom server on a free loopback port)."""
    listeners = []

    def make(**kwargs) -> Listener:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        listener = Listener(DicomAnalyser(predictor, heatmaps=False), port=0, out_dir=out, **kwargs).start()
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.stop(timeout=60)


def _send_file(port: int, path: Path, syntax) -> int | None:
    """A C-STORE of a Part 10 file as its bytes (pynetdicom's chunked send: the request's Affected SOP Instance
    UID is the file meta's, whatever the data set says)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _store(port, path, syntaxes=[syntax])
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def _file_with_uids(tmp_path: Path, name: str, request_uid: str, dataset_uid: str) -> Path:
    ds = _synthetic_cr()
    ds.SOPInstanceUID = dataset_uid
    ds.file_meta.MediaStorageSOPInstanceUID = request_uid
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.mark.parametrize(
    ("request_uid", "dataset_uid", "why"),
    [
        ("../../escaped", "../../escaped", "request UID with a path"),
        ("1.2.3\nWARNING forged line", "1.2.3", "request UID with a newline"),
        ("1.2.840.0001.5", "1.2.840.0001.5", "leading zero"),
        ("1.2.826.0.1.3680043.8.498.4", "1." + "2" * 70, "data set UID over 64 characters"),
        ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "data set UID differs from the request"),
        ("1.2.826.0.1.3680043.8.498.3", "../../escaped", "data set UID with a path"),
    ],
)
def test_uids_that_could_leave_out_or_forge_logs_are_refused(node, tmp_path, caplog, request_uid, dataset_uid, why):
    caplog.set_level(logging.INFO, logger="pneumo.dicom")
    listener = node()
    path = _file_with_uids(tmp_path, "bad.dcm", request_uid, dataset_uid)
    assert _send_file(listener.port, path, pydicom.uid.ExplicitVRLittleEndian) == 0xC003, why
    ok = _synthetic_cr(1)
    assert _store(listener.port, ok) == 0x0000  # the association and the node carry on
    assert listener.wait_idle(120)
    written = sorted(p.name for p in tmp_path.rglob("*.dcm") if p.parent.name == "out" or p.name != "bad.dcm")
    assert written == sorted([f"{ok.SOPInstanceUID}.sc.dcm", f"{ok.SOPInstanceUID}.sr.dcm"]), written
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))
    assert "\nWARNING forged line" not in caplog.text and "refused" in caplog.text
    assert listener.counters.analysed == 1


def test_a_colour_cr_is_refused_from_its_header(node):
    import numpy as np

    listener = node()
    colour = _synthetic_cr(2, size=64, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    colour.PixelData = np.zeros((64, 64, 3), np.uint16).tobytes()
    assert _store(listener.port, colour) == 0xA900  # acknowledged and then dropped before
    assert listener.counters.refused == 1 and listener.counters.received == 1


def test_a_codestream_bomb_is_refused_before_success(node):
    from test_hardening_inputs import j2k_bomb_dicom

    listener = node()
    ds = pydicom.dcmread(io.BytesIO(j2k_bomb_dicom()))
    assert _store(listener.port, ds, syntaxes=[ds.file_meta.TransferSyntaxUID]) == 0xC000
    assert listener.counters.refused == 1 and listener.counters.analysed == 0


def test_bytes_in_flight_are_bounded(node, predictor):
    import threading

    big = _synthetic_cr(3, size=512)  # 512 KB of pixels
    small = _synthetic_cr(4, size=128)  # 32 KB
    listener = node(max_instance_mb=0.25, max_inflight_mb=0.3, workers=1, queue_size=8)
    assert _store(listener.port, big) == 0xC004  # over the per-instance limit: refused from its size
    gate = threading.Event()
    slow = listener.analyser.analyse
    listener.analyser.analyse = lambda *a, **kw: (gate.wait(60), slow(*a, **kw))[1]
    try:
        # 0.3 MB in flight: a few small instances fit, then A700 (retry later) although the queue has room.
        statuses = [_store(listener.port, _synthetic_cr(10 + i, size=128)) for i in range(12)]
        assert 0xA700 in statuses and statuses[0] == 0x0000
        assert statuses.index(0xA700) < 10, statuses
    finally:
        gate.set()
    assert listener.wait_idle(120)
    assert listener._inflight == 0
    assert _store(listener.port, small) == 0x0000  # the budget is released as instances finish


def test_beyond_loopback_needs_calling_ae_titles(predictor, tmp_path):
    from pneumo.errors import ConfigError

    analyser = DicomAnalyser(predictor, heatmaps=False)
    for host in ("0.0.0.0", "10.1.2.3", "::", "pacs.example.org"):
        with pytest.raises(ConfigError, match="--calling-aet"):
            Listener(analyser, host=host, port=0, out_dir=tmp_path)
    Listener(analyser, host="0.0.0.0", port=0, out_dir=tmp_path, calling_ae_titles=["ORTHANC"])  # not started
    for host in ("127.0.0.1", "localhost", "::1"):
        Listener(analyser, host=host, port=0, out_dir=tmp_path)


def test_sigterm_drains_every_acknowledged_instance(tmp_path):
    """16 x Success, then SIGTERM at once (what docker and systemd send): all 16 results are written and logged."""
    import signal

    port, out = free_port(), tmp_path / "out"
    cmd = [sys.executable, "-m", "pneumo.cli", "dicom-listen", "--port", str(port), "--out", str(out),
           "--no-heatmaps", "--workers", "1"]  # fmt: skip
    log = tmp_path / "listen.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a loaded CI machine takes its time to load the model
        while "listening as PNEUMO" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "listening as PNEUMO" in log.read_text(), log.read_text()
        sent = [_synthetic_cr(100 + i, size=256) for i in range(16)]
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
        assert assoc.is_established
        statuses = [assoc.send_c_store(ds).Status for ds in sent]
        assoc.release()
        assert statuses == [0x0000] * 16
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{ds.SOPInstanceUID}.{kind}.dcm" for ds in sent for kind in ("sr", "sc")), text
    assert "stopping (SIGTERM)" in text and "16 received, 0 refused, 16 analysed" in text, text
