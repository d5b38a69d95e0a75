"""DICOM out: the SR and SC objects, ``pneumo predict --dicom-out``, and validation by dcmtk and dicom3tools."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the 'dicom' extra is not installed")
import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from pneumo.cli import main
from pneumo.dicom.instance import DicomAnalyser, DicomError, check_chest_radiograph, read_header
from pneumo.dicom.sc import DISCLAIMER, REFER_TEXT, build_sc, overlay, render, result_line
from pneumo.dicom.sr import build_sr
from pneumo.inference import Prediction, Predictor
from pneumo.modelfile import ModelMeta

CHEST = ("RG1_J2KI.dcm", "Issue44_Monochrome1-Jpeg.dcm")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()


@pytest.fixture(scope="module")
def outputs(dicom_dir, predictor, tmp_path_factory):
    """SR + SC of the two real chest CRs (no heat map: the Grad-CAM path has its own test below)."""
    analyser = DicomAnalyser(predictor, heatmaps=False)
    out = {}
    for name in CHEST:
        data = (dicom_dir / name).read_bytes()
        out[name] = (analyser.analyse(data, name), predictor.predict_one(data, name), data)
    return out


@pytest.fixture(scope="module")
def site(predictor, dicom_dir, tmp_path_factory):
    """A real site file (``pneumo.adapt.site``'s fit and REFER band, ``pneumo.modelfile``'s site format over the bundled
    model) whose band is centred on the network's log-odds of RG1_J2KI.dcm, and the SR + SC of both chest CRs
    made through it. The site sample is synthetic log-odds (seeded): 300 normal images one unit below that value,
    300 pneumonia images one unit above, unit spread. At alpha 0.05 the band spans about +-0.64 log-odds units
    (the 5 % / 95 % quantiles of the two classes, 1 - 1.645), so RG1 lies deep inside it: REFER."""
    from pneumo.adapt.fit import figures_with_intervals, fit_site
    from pneumo.adapt.report import base_predictor
    from pneumo.modelfile import ReferBand, SiteBase, SiteCalibration, SiteFigures, SiteSample, save_site_file

    alpha, target = 0.05, 0.95
    z0 = predictor.predict_one((dicom_dir / CHEST[0]).read_bytes(), CHEST[0]).log_odds
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 300)
    z = z0 + np.where(y == 1, 1.0, -1.0) + rng.standard_normal(y.size)
    fit = fit_site(z, y, target, refer_error=alpha)
    base_bytes, base_file, base = base_predictor(None)
    figures = figures_with_intervals(y, fit.probability(z), fit.decide(z), np.arange(y.size), n_boot=50, seed=0)
    calibration = SiteCalibration(
        name="Ward 7",
        base=SiteBase(name=base.meta.name, version=base.meta.version, file=base_file,
                      sha256=hashlib.sha256(base_bytes).hexdigest(), temperature=base.meta.temperature,
                      calibration_bias=base.meta.calibration_bias, threshold=base.meta.threshold),
        temperature=fit.temperature,
        calibration_bias=fit.bias,
        threshold=fit.threshold,
        target_sensitivity=target,
        refer=ReferBand(low=fit.band[0], high=fit.band[1], max_error=alpha),
        sample=SiteSample(folder="synthetic", n=y.size, n_normal=300, n_pneumonia=300, n_patients=y.size),
        cross_validated=SiteFigures(folds=2, **{k: figures[k] for k in ("sensitivity", "specificity", "ece",
                                                                        "roc_auc")}),
    )  # fmt: skip
    path = save_site_file(tmp_path_factory.mktemp("site") / "ward7.pneumo", calibration, base_bytes)
    site_predictor = Predictor.load(path)
    analyser = DicomAnalyser(site_predictor, heatmaps=False)
    results = {name: analyser.analyse((dicom_dir / name).read_bytes(), name) for name in CHEST}
    return {"band": fit.band, "results": results, "predictor": site_predictor}


def _meta(**kw) -> ModelMeta:
    return ModelMeta(arch="cnn-small", name="unit-model", version="1.2.3", threshold=0.5, **kw)


def _source(**kw) -> Dataset:
    """A minimal CR header, as pydicom would read it."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3", "1.2.3.5"
    ds.Modality, ds.Rows, ds.Columns = "CR", 64, 64
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName"):  # fmt: skip
        setattr(ds, key, None)
    ds.PatientID, ds.PatientName = "P1", "Doe^Jane"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _pred(p=0.9, **kw) -> Prediction:
    fields = dict(path="x.dcm", probability=p, prediction="PNEUMONIA" if p >= 0.5 else "NORMAL", threshold=0.5,
                  in_domain=True, domain_score=0.6)  # fmt: skip
    return Prediction(**{**fields, **kw})


def _report(sr) -> hd.sr.MeasurementReport:
    """The TID 1500 report as highdicom reads it back, from a file, a pydicom data set or a highdicom SR."""
    if isinstance(sr, str | Path):
        sr = hd.sr.srread(sr)
    elif not isinstance(sr, hd.sr.ComprehensiveSR):
        sr = hd.sr.ComprehensiveSR.from_dataset(sr)
    return hd.sr.MeasurementReport.from_sequence(sr.content)


def _groups(sr):
    return _report(sr).get_image_measurement_groups()


def _numbers(sr) -> dict[tuple[str, str], float]:
    """(finding, concept) -> numeric value over the SR's measurement groups."""
    return {(g.finding_type.meaning, m.name.meaning): float(m.value) for g in _groups(sr) for m in g.get_measurements()}


def _evaluations(sr) -> dict[str, hd.sr.CodedConcept]:
    """Qualitative evaluations of the pneumonia group, by concept name (each name is used once)."""
    return {e.name.meaning: e.value for e in _groups(sr)[0].get_qualitative_evaluations()}


def _texts(group) -> list[tuple[str, str]]:
    return [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in group[0].ContentSequence
            if i.ValueType == "TEXT"]  # fmt: skip


# --- the SR ---


def test_sr_has_probability_decision_threshold_and_domain(outputs):
    (res, pred, _) = outputs["RG1_J2KI.dcm"]
    numbers = _numbers(res.sr)
    # DS values are written with 6 decimals
    assert numbers[("Pneumonia", "Probability")] == pytest.approx(pred.probability, abs=5e-7)
    assert numbers[("Pneumonia", "Threshold Value")] == pytest.approx(pred.threshold, abs=5e-7)
    assert numbers[("Pneumonia", "Domain score")] == pytest.approx(pred.domain_score, abs=5e-7)
    assert numbers[("Bacterial pneumonia", "Probability")] == pytest.approx(pred.p_bacterial, abs=5e-7)
    assert numbers[("Viral pneumonia", "Probability")] == pytest.approx(pred.p_viral, abs=5e-7)
    group = _groups(res.sr)[0]
    assert group.finding_type == hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
    evaluations = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
    decision = "Present" if pred.prediction == "PNEUMONIA" else "Absent"
    assert evaluations["Pneumonia"].meaning == decision
    assert evaluations["Image within the validated image domain"].meaning == ("Yes" if pred.in_domain else "No")


def test_sr_is_in_the_source_study_with_new_uids_and_references(outputs, dicom_dir):
    for name in CHEST:
        res, _, _ = outputs[name]
        src = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        for obj in (res.sr, res.sc):
            assert obj.StudyInstanceUID == src.StudyInstanceUID
            assert obj.PatientID == src.PatientID and obj.PatientName == src.PatientName
            for key in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"):
                assert str(obj.get(key) or "") == str(src.get(key) or ""), key
            assert obj.SeriesInstanceUID != src.SeriesInstanceUID and obj.SOPInstanceUID != src.SOPInstanceUID
            assert obj.get("SpecificCharacterSet") == src.get("SpecificCharacterSet")
        assert res.sr.SeriesInstanceUID != res.sc.SeriesInstanceUID
        evidence = res.sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert res.sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        source_image = _groups(res.sr)[0].source_images[0]
        assert source_image.referenced_sop_instance_uid == src.SOPInstanceUID


def test_sr_names_the_algorithm():
    sr = build_sr(_source(), _pred(), _meta())
    texts = _texts(_groups(sr)[0])
    assert ("Algorithm Name", "unit-model") in texts and ("Algorithm Version", "1.2.3") in texts
    assert any(name == "Algorithm Parameters" and value.startswith("Pneumo 0.") for name, value in texts)
    assert sr.ManufacturerModelName == "unit-model" and "Pneumo" in sr.Manufacturer


def test_sr_subtype_groups_only_when_the_model_has_them():
    binary = build_sr(_source(), _pred(), _meta())
    assert [g.finding_type.meaning for g in _groups(binary)] == ["Pneumonia"]
    both = build_sr(_source(), _pred(p_normal=0.1, p_bacterial=0.6, p_viral=0.3), _meta())
    assert [g.finding_type.meaning for g in _groups(both)] == ["Pneumonia", "Bacterial pneumonia", "Viral pneumonia"]


def test_out_of_domain_gets_the_warning_in_both_objects():
    ood = _pred(in_domain=False, domain_score=0.001)
    sr = build_sr(_source(), ood, _meta())
    values = {e.name.meaning: e.value.meaning for e in _groups(sr)[0].get_qualitative_evaluations()}
    assert values["Image within the validated image domain"] == "No"
    assert "do not rely" in values["Warning"]
    assert "Warning" not in {e.name.meaning for e in _groups(build_sr(_source(), _pred(), _meta()))[0]
                             .get_qualitative_evaluations()}  # fmt: skip
    image = np.full((200, 300), 0.5, np.float32)
    # The warning is one more line of burnt-in text: the band above the X-ray grows by one line.
    tall, short = render(image, None, ood, _meta()), render(image, None, _pred(), _meta())
    assert tall.shape[0] > short.shape[0] and tall.shape[1] == short.shape[1] == 300
    band = tall[: tall.shape[0] - 200]
    assert ((band[..., 0] > 200) & (band[..., 1] > 100) & (band[..., 2] < 60)).any()  # orange warning text
    sc = build_sc(_source(), image, None, ood, _meta())
    assert "P(pneumonia) 0.90" in sc.ImageComments


def test_refer_is_indeterminate_with_the_band_and_a_note_for_the_reader(site):
    """A study in the site's REFER band must never read "pneumonia absent": Undetermined, the band, the note."""
    low, high = site["band"]
    res = site["results"][CHEST[0]]
    pred = res.prediction
    assert pred.prediction == "REFER" and low <= pred.probability <= high  # the fixture's premise
    assert (pred.refer_low, pred.refer_high) == (low, high)
    evaluations = _evaluations(res.sr)
    # SNOMED CT 373068000 |Undetermined|, CID 240's third member (pydicom's codes.SCT.Undetermined)
    assert evaluations["Pneumonia"] == hd.sr.CodedConcept("373068000", "SCT", "Undetermined")
    assert evaluations["Recommendation"] == hd.sr.CodedConcept(
        "REFER", "99PNEUMO", "Referred for a reader: the site data back neither decision"
    )
    numbers = _numbers(res.sr)
    assert numbers[("Pneumonia", "REFER band lower limit")] == pytest.approx(low, abs=5e-7)  # DS: 6 decimals
    assert numbers[("Pneumonia", "REFER band upper limit")] == pytest.approx(high, abs=5e-7)
    assert numbers[("Pneumonia", "Probability")] == pytest.approx(pred.probability, abs=5e-7)
    params = [v for n, v in _texts(_groups(res.sr)[0]) if n == "Algorithm Parameters"]
    assert f"REFER band {low:.6g} to {high:.6g} (site Ward 7)" in params
    assert res.sc.ImageComments.startswith("REFER  P(pneumonia)") and REFER_TEXT in res.sc.ImageComments
    assert "Decision support only" in res.sc.ImageComments


def test_band_limits_go_with_every_decision_made_under_a_band(site, outputs):
    low, high = site["band"]
    expected = {"NORMAL": "Absent", "PNEUMONIA": "Present", "REFER": "Undetermined"}
    for name in CHEST:
        res = site["results"][name]
        p = res.prediction.probability
        decision = "NORMAL" if p < low else "PNEUMONIA" if p > high else "REFER"
        assert res.prediction.prediction == decision
        evaluations = _evaluations(res.sr)
        assert evaluations["Pneumonia"].meaning == expected[decision]
        assert ("Recommendation" in evaluations) == (decision == "REFER") == (REFER_TEXT in res.sc.ImageComments)
        assert _numbers(res.sr)[("Pneumonia", "REFER band upper limit")] == pytest.approx(high, abs=5e-7)
    # Without a band (the bundled model): two-way, no band values, no note.
    for res, _, _ in outputs.values():
        assert not any("REFER" in concept for _, concept in _numbers(res.sr))
        assert _evaluations(res.sr)["Pneumonia"].meaning in ("Present", "Absent")


def test_an_unknown_decision_is_refused_not_reported_absent():
    odd = _pred(prediction="MAYBE")
    with pytest.raises(ValueError, match="unknown decision 'MAYBE'"):
        build_sr(_source(), odd, _meta())
    with pytest.raises(ValueError, match="unknown decision 'MAYBE'"):
        render(np.full((50, 80), 0.5, np.float32), None, odd, _meta())


# --- the SC ---


def test_sc_is_burned_in_rgb_with_the_xray_below_the_text(outputs):
    res, pred, _ = outputs["Issue44_Monochrome1-Jpeg.dcm"]
    sc = res.sc
    assert sc.BurnedInAnnotation == "YES" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.LossyImageCompression == "01"  # the source was JPEG baseline
    px = sc.pixel_array
    assert px.dtype == np.uint8 and max(px.shape[:2]) <= 1024 + 200
    assert f"{pred.probability:.2f}" in sc.ImageComments and "Decision support only" in sc.ImageComments


AMBER, GREEN, RED = (255, 200, 0), (67, 160, 71), (229, 57, 53)


def _has_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """Whether any pixel has exactly this colour: Pillow draws a glyph's fully covered pixels in the fill colour
    (its anti-aliased edges are that colour scaled towards the black background)."""
    return bool(np.all(pixels == np.array(colour, np.uint8), axis=-1).any())


def test_sc_refer_is_amber_not_green_and_keeps_the_disclaimer():
    image = np.full((200, 600), 0.5, np.float32)  # 600 px wide: glyphs big enough to have fully covered pixels
    band = dict(refer_low=0.2, refer_high=0.6)
    refer = _pred(0.41, prediction="REFER", **band)
    assert result_line(refer) == "REFER  P(pneumonia) 0.410 (REFER band 0.200 to 0.600)  domain score 0.60"
    text = render(image, None, refer, _meta())
    text = text[: text.shape[0] - 200]  # the text band above the X-ray
    assert _has_colour(text, AMBER) and not _has_colour(text, GREEN) and not _has_colour(text, RED)
    # The same layout for a NORMAL and a PNEUMONIA under the band: green and red, no amber (nothing referred).
    for p, colour in ((0.1, GREEN), (0.9, RED)):
        other = render(image, None, _pred(p, **band), _meta())
        other = other[: other.shape[0] - 200]
        assert _has_colour(other, colour) and not _has_colour(other, AMBER)
    sc = build_sc(_source(), image, None, refer, _meta())
    assert sc.ImageComments == f"{result_line(refer)}. {REFER_TEXT} {DISCLAIMER}"
    assert "Decision support only" in sc.ImageComments and sc.BurnedInAnnotation == "YES"


def test_overlay_alpha_is_a_smooth_ramp():
    gray = np.full((1, 256), 0.5, np.float32)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :]
    blended = overlay(gray, ramp)[0] / 255.0
    step = 1 / 255  # the uint8 rounding of the burnt-in pixels
    np.testing.assert_allclose(blended[:38], 0.5, atol=step)  # no tint where the map is below 0.15
    hot = blended[204]  # map 0.8: jet is red-orange there and the overlay close to its 0.55 opacity
    assert hot[0] > 0.7 and hot[2] < 0.3
    # No step: between neighbouring map values (1/255 apart) no channel jumps more than a few levels.
    assert np.abs(np.diff(blended, axis=0)).max() < 0.02 + step
    assert overlay(gray, None).shape == (1, 256, 3)


def _jpeg_as_chest_cr(jpeg: Path) -> bytes:
    """A real X-ray JPEG wrapped as an 8-bit chest CR (built in the test, never stored)."""
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(jpeg).convert("L"))
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = _source(SOPInstanceUID=generate_uid(), StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    ds.file_meta, ds.BodyPartExamined, ds.PatientName = meta, "CHEST", "Test^Child"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return _encode(ds)


def test_sc_with_a_real_heat_map(fullres_dir, predictor):
    pytest.importorskip("torch", reason="the heat map needs the 'explain' extra until the ONNX CAM lands")
    from pneumo.dicom.instance import SC_MAX_SIDE
    from pneumo.imaging import load_display_image, load_image, resize_map

    analyser = DicomAnalyser(predictor, heatmaps=True)
    for jpeg in sorted((fullres_dir / "PNEUMONIA").glob("*.jpeg")):
        data = _jpeg_as_chest_cr(jpeg)
        cam = analyser.heatmap(load_image(data, predictor.size, name=jpeg.name))
        if cam is not None and cam.max() > 0.7:
            break
    else:
        pytest.fail("no pneumonia X-ray of the val split gave a heat map")
    res = analyser.analyse(data, jpeg.name)
    px = res.sc.pixel_array.astype(int)
    xray = px[-load_display_image(data, SC_MAX_SIDE).shape[0] :]  # the X-ray fills the SC under the text band
    hot = resize_map(cam, xray.shape[:2]) > 0.6  # the map is on an absolute scale: hot regions above 0.6
    colour = xray.max(axis=2) - xray.min(axis=2)
    # Where the map is hot the overlay tints the gray X-ray; where it is cold the pixels stay (nearly) gray.
    assert np.median(colour[hot]) > 40 and np.median(colour[~hot]) < np.median(colour[hot]) / 2


# --- the checks ---


def test_non_chest_and_pixel_less_dicoms_are_refused(dicom_dir):
    cases = {
        "Issue56-NoPixelData.dcm": "BodyPartExamined is EXTREMITY",
        "vlut_04.dcm": "Modality OT",
    }
    for name, reason in cases.items():
        ds = read_header((dicom_dir / name).read_bytes(), name)
        with pytest.raises(DicomError, match=reason):
            check_chest_radiograph(ds, name)
    src = pydicom.dcmread(dicom_dir / "RG1_J2KI.dcm")
    del src.PixelData
    ds = read_header(_encode(src), "nopix")
    with pytest.raises(DicomError, match="no pixel data"):
        check_chest_radiograph(ds, "nopix")
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    with pytest.raises(DicomError, match="not a radiograph"):
        check_chest_radiograph(read_header(_encode(ct), "ct"), "ct")


def _encode(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- pneumo predict --dicom-out ---


def test_predict_dicom_out(dicom_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in (*CHEST, "Issue56-NoPixelData.dcm"):
        shutil.copy(dicom_dir / name, src / name)
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(src / "photo.png")
    out, csv = tmp_path / "dicom-out", tmp_path / "rows.csv"
    assert main(["predict", str(src), "--dicom-out", str(out), "-o", str(csv)]) == 3
    err = capsys.readouterr().err
    assert "1 non-DICOM input skipped" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{Path(n).stem}.{k}.dcm" for n in CHEST for k in ("sr", "sc"))
    import csv as csvlib

    rows = {Path(r["path"]).name: r for r in csvlib.DictReader(csv.open())}
    assert "no pixel data" in rows["Issue56-NoPixelData.dcm"]["error"]
    assert "not a radiograph" in rows["ct.dcm"]["error"] and rows["ct.dcm"]["probability"] == ""
    assert rows["photo.png"]["error"] == "" and rows["photo.png"]["probability"] != ""
    for name in CHEST:
        sr = hd.sr.srread(out / f"{Path(name).stem}.sr.dcm")
        assert _numbers(sr)[("Pneumonia", "Probability")] == pytest.approx(float(rows[name]["probability"]), abs=2e-6)


def test_predict_dicom_out_reads_and_decodes_each_input_once(dicom_dir, tmp_path, monkeypatch):
    """Each input is opened once and decoded once: a DICOM's bytes give its row, its SR and its SC (header, network
    input, SC image and heat map), a PNG's its row. Counts the opens of the input files and the openings of
    pneumo.imaging's loaders (every one goes through ``_guarded``)."""
    import builtins
    import io
    from collections import Counter

    from PIL import Image

    from pneumo.imaging import loader

    src = tmp_path / "in"
    src.mkdir()
    for name in CHEST:
        shutil.copy(dicom_dir / name, src / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(src / "photo.png")
    opened, decoded = Counter(), Counter()
    real_open, guarded = builtins.open, loader._guarded

    def counted_open(file, *args, **kwargs):
        if isinstance(file, str | Path) and Path(file).parent == src:
            opened[Path(file).name] += 1
        return real_open(file, *args, **kwargs)

    def counted_guarded(source, name, read):
        decoded[Path(name).name] += 1
        return guarded(source, name, read)

    monkeypatch.setattr(builtins, "open", counted_open)
    monkeypatch.setattr(io, "open", counted_open)  # pathlib's way in
    monkeypatch.setattr(loader, "_guarded", counted_guarded)
    out = tmp_path / "dicom-out"
    assert main(["predict", str(src), "--dicom-out", str(out), "-o", str(tmp_path / "rows.csv")]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{Path(n).stem}.{k}.dcm" for n in CHEST for k in ("sr", "sc"))
    inputs = {*CHEST, "photo.png"}
    assert opened == dict.fromkeys(inputs, 1)
    assert decoded == dict.fromkeys(inputs, 1)


# --- validated by tools no one here wrote ---


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"no {name} on PATH: apt-get install dcmtk dicom3tools to run the validator tests")
    return path


def _save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dciodvfy_errors(results: dict, tmp_path: Path) -> None:
    dciodvfy = _tool("dciodvfy")
    for name, res in results.items():
        for kind, ds in (("sr", res.sr), ("sc", res.sc)):
            path = _save(ds, tmp_path / f"{Path(name).stem}.{kind}.dcm")
            run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
            text = run.stdout + run.stderr
            assert ("ComprehensiveSR" if kind == "sr" else "SCImage") in text  # it recognised the IOD
            errors = [line for line in text.splitlines() if line.startswith("Error")]
            assert not errors, f"{name} {kind}: {errors}"


def test_dciodvfy_reports_no_errors(outputs, tmp_path):
    _dciodvfy_errors({name: res for name, (res, _, _) in outputs.items()}, tmp_path)


def test_dciodvfy_reports_no_errors_under_a_refer_band(site, tmp_path):
    _dciodvfy_errors(site["results"], tmp_path)


def test_dsrdump_shows_indeterminate_and_the_band(site, tmp_path):
    dsrdump = _tool("dsrdump")
    res = site["results"][CHEST[0]]
    path = _save(res.sr, tmp_path / "refer.sr.dcm")
    text = subprocess.run([dsrdump, str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'CODE:(,,"Pneumonia")=(373068000,SCT,"Undetermined")' in text
    low, high = site["band"]
    assert f'NUM:(,,"REFER band lower limit")="{low:.6f}"' in text
    assert f'NUM:(,,"REFER band upper limit")="{high:.6f}"' in text
    assert "Referred for a reader" in text


def test_dsrdump_shows_probability_and_decision(outputs, tmp_path):
    dsrdump = _tool("dsrdump")
    res, pred, _ = outputs["RG1_J2KI.dcm"]
    path = _save(res.sr, tmp_path / "sr.dcm")
    text = subprocess.run([dsrdump, str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert f'NUM:(,,"Probability")="{pred.probability:.6f}"' in text
    decision = "Present" if pred.prediction == "PNEUMONIA" else "Absent"
    assert f'CODE:(,,"Pneumonia")=({"52101004" if decision == "Present" else "272519000"},SCT,"{decision}")' in text
    assert '(233604007,SCT,"Pneumonia")' in text and "Threshold Value" in text


def test_an_empty_heat_map_is_said_on_the_secondary_capture():
    """An occlusion map that draws nothing (a confident image: no single region moves its log-odds enough) gets one
    more line, saying so, where a drawn map gets none."""
    image = np.full((120, 160), 0.5, np.float32)
    drawn = np.zeros_like(image)
    drawn[40:80, 60:100] = 0.8
    empty = np.full_like(image, 0.1)
    with_line, without = render(image, empty, _pred(), _meta()), render(image, drawn, _pred(), _meta())
    assert with_line.shape[0] > without.shape[0] and with_line.shape[1:] == without.shape[1:]
    assert render(image, np.zeros_like(image), _pred(), _meta()).shape == with_line.shape
