"""``pneumo export --int8``: a real QDQ graph from a tiny seeded model, its figures, and the refusal path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime.quantization")
onnx = pytest.importorskip("onnx")

from pneumo.cli import main  # noqa: E402
from pneumo.evaluation.metrics import binary_metrics  # noqa: E402
from pneumo.inference import Predictor, open_model  # noqa: E402
from pneumo.modelfile import ModelFileError, load_model_file  # noqa: E402
from pneumo.quantize import ParityBounds, QuantizationError, calibration_paths, quantize_model  # noqa: E402

LOOSE = ParityBounds(max_auc_drop=1.0, min_agreement=0.0, max_flag_rate_change=1.0, min_images=1)


def _image(seed: int, pneumonia: bool, size: int = 64) -> Image.Image:
    """Smooth X-ray-like images; the PNEUMONIA ones have a bright patch, so the classes differ in content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.4 * yy + 0.1 * rng.standard_normal((size, size))
    if pneumonia:
        img += 0.35 * np.exp(-((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2) / 0.02)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """root/{train,val}/{NORMAL,PNEUMONIA}: 24 calibration images and 40 validation images."""
    root = tmp_path_factory.mktemp("q") / "data"
    seed = 0
    for split, n in (("train", 12), ("val", 20)):
        for label in ("NORMAL", "PNEUMONIA"):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(n):
                seed += 1
                _image(seed, label == "PNEUMONIA").save(d / f"{label.lower()}{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def int8_model(tiny_model, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.pneumo"
    path, parity = quantize_model(tiny_model, out, dataset / "train", validation_data=dataset, bounds=LOOSE)
    return path, parity


def _auc(predictor: Predictor, dataset: Path) -> tuple[float, list[str], list[bool]]:
    files = sorted((dataset / "val").rglob("*.png"))
    preds = list(predictor.predict_sources((str(f), f) for f in files))
    y = np.array([f.parent.name == "PNEUMONIA" for f in files], dtype=int)
    auc = binary_metrics(y, np.array([p.probability for p in preds]), predictor.threshold)["roc_auc"]
    return float(auc), [p.prediction for p in preds], [p.in_domain is False for p in preds]


def test_int8_graph_written_with_its_figures(int8_model, tiny_model, dataset):
    path, parity = int8_model
    mf = load_model_file(path)
    assert mf.meta.precision == "int8"
    q = mf.meta.quantization
    assert q.calibration_images == 24 and q.validation_images == 40
    assert q.bounds == {"max_auc_drop": 1.0, "min_agreement": 0.0, "max_flag_rate_change": 1.0, "min_images": 1}
    # A real QDQ graph: quantised weights and activations, same outputs as the fp32 graph.
    graph = onnx.load_from_string(mf.onnx).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = load_model_file(tiny_model)
    assert [o.name for o in graph.output] == [o.name for o in onnx.load_from_string(fp32.onnx).graph.output]
    # The stored figures are what the two graphs give through the ordinary prediction path.
    auc32, dec32, flag32 = _auc(Predictor(fp32), dataset)
    auc8, dec8, flag8 = _auc(Predictor(mf), dataset)
    assert q.auc_fp32 == pytest.approx(auc32, abs=1e-12) and q.auc_int8 == pytest.approx(auc8, abs=1e-12)
    assert q.auc_drop == pytest.approx(auc32 - auc8, abs=1e-12)
    assert q.agreement == pytest.approx(np.mean(np.array(dec32) == np.array(dec8)), abs=1e-12)
    assert q.flag_rate_fp32 == pytest.approx(np.mean(flag32)) and q.flag_rate_int8 == pytest.approx(np.mean(flag8))
    assert parity.n == 40 and parity.agreement == q.agreement
    assert mf.weights == fp32.weights  # the PyTorch twin (explain) stays the fp32 one


def test_refused_when_a_bound_is_tighter_than_measured(int8_model, tiny_model, dataset, tmp_path):
    _, parity = int8_model
    out = tmp_path / "refused.pneumo"
    tight = ParityBounds(max_auc_drop=parity.auc_drop - 1e-3, min_agreement=0.0, max_flag_rate_change=1.0)
    with pytest.raises(QuantizationError, match="not written: AUC drops by"):
        quantize_model(tiny_model, out, dataset / "train", validation_data=dataset, bounds=tight)
    assert not out.exists() and not list(tmp_path.iterdir())
    if parity.agreement < 1:  # a tighter agreement bound exists only below 100 %
        tight = ParityBounds(max_auc_drop=1.0, min_agreement=parity.agreement + 1e-3, max_flag_rate_change=1.0)
        with pytest.raises(QuantizationError, match="decisions agree on"):
            quantize_model(tiny_model, out, dataset / "train", validation_data=dataset, bounds=tight)
    assert not out.exists()


def test_onnx_output_carries_the_precision(int8_model, tmp_path):
    path, _ = int8_model
    assert main(["export", "--int8", "-o", str(tmp_path / "x.onnx")]) == 2  # no --calibration-data
    from pneumo.quantize import _embed_meta

    mf = load_model_file(path)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(_embed_meta(mf.onnx, mf.meta.model_dump_json(), mf.arrays))
    assert open_model(onnx_path).meta.precision == "int8"


def test_calibration_never_uses_validation_images(dataset):
    val = {p.resolve() for p in (dataset / "val").rglob("*.png")}
    picked = calibration_paths(dataset, val, count=1000)
    assert len(picked) == 24 and not {p.resolve() for p in picked} & val
    assert calibration_paths(dataset, val, count=5) == calibration_paths(dataset, val, count=5)  # seeded
    with pytest.raises(QuantizationError, match="no calibration images"):
        calibration_paths(dataset / "val", val, count=10)


def test_int8_metadata_is_validated(int8_model, tmp_path):
    path, _ = int8_model
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "meta.json"}
    for broken, why in (({"quantization": None}, "quantization figures"), ({"precision": "int4"}, "precision")):
        bad = tmp_path / f"bad-{why.split()[0]}.pneumo"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("meta.json", json.dumps({**meta, **broken}))
            for n, data in members.items():
                zf.writestr(n, data)
        with pytest.raises(ModelFileError, match=why):
            load_model_file(bad)
    with pytest.raises(QuantizationError, match="already int8"):
        quantize_model(path, tmp_path / "again.pneumo", tmp_path)
    args = ["export", "--int8", "--calibration-data", str(tmp_path), "-m", str(path), "-o", str(tmp_path / "x.pneumo")]
    assert main(args) == 1  # the CLI prints the refusal as one line


def test_without_a_split_a_folder_of_validation_images_still_calibrates(tiny_model, dataset, tmp_path):
    """Issue 21: ``--calibration-data DIR`` alone, DIR a plain NORMAL/ PNEUMONIA/ folder, made every image a
    validation image and then refused for want of calibration images. Without a split it calibrates on them and
    says so; with a split CSV whose val rows are all the images it is still refused."""
    train = dataset / "train"  # no val level: every image is a validation image
    path, parity = quantize_model(tiny_model, tmp_path / "a.pneumo", train, bounds=LOOSE)
    q = load_model_file(path).meta.quantization
    assert q.calibration_images == 24 and q.validation_images == 24
    assert parity.calibrated_on_validation == 24 and "24 validation images" in parity.calibration_note()
    assert calibration_paths(train, set(), count=1000) == calibration_paths(train, set(), count=1000, fall_back=True)

    _, separate = quantize_model(tiny_model, tmp_path / "b.pneumo", train, validation_data=dataset, bounds=LOOSE)
    assert separate.calibrated_on_validation == 0 and separate.calibration_note() is None

    split = tmp_path / "split.csv"
    rows = [f"{p.relative_to(train)},val,{p.parent.name},{p.stem},none" for p in sorted(train.rglob("*.png"))]
    split.write_text("path,split,label,patient_id,subtype\n" + "\n".join(rows) + "\n")
    with pytest.raises(QuantizationError, match="no calibration images outside the validation images"):
        quantize_model(tiny_model, tmp_path / "d.pneumo", train, split_csv=split, bounds=LOOSE)
    assert not (tmp_path / "d.pneumo").exists()


def test_the_calibration_note_is_one_printed_line(tiny_model, dataset, tmp_path, monkeypatch, capsys):
    import pneumo.quantize as quantize

    monkeypatch.setattr(quantize, "ParityBounds", lambda: LOOSE)  # the command's default bounds, loosened
    out = tmp_path / "m.pneumo"
    export = ["export", "--int8", "-m", str(tiny_model), "-o", str(out), "--calibration-data"]
    assert main([*export, str(dataset / "train")]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "24 validation images were calibrated on" in notes[0]
    assert f"wrote {out}" in captured.out
    capsys.readouterr()
    assert main([*export, str(dataset)]) == 0
    assert "note:" not in capsys.readouterr().err  # a val level tells them apart: nothing to say


def test_a_refusal_says_the_calibration_saw_the_validation_images(tiny_model, dataset, tmp_path):
    """Without a split, a graph refused at the parity bounds still says that calibration used validation images."""
    tight = ParityBounds(max_auc_drop=-1.0, min_agreement=0.0, max_flag_rate_change=1.0)  # always refused
    with pytest.raises(QuantizationError, match=r"not written: .*24 validation images were calibrated on"):
        quantize_model(tiny_model, tmp_path / "r.pneumo", dataset / "train", bounds=tight)
    with pytest.raises(QuantizationError) as refused:  # a separate validation folder: nothing to say
        quantize_model(tiny_model, tmp_path / "s.pneumo", dataset / "train", validation_data=dataset, bounds=tight)
    assert "calibrated on" not in str(refused.value)


def test_parity_on_too_few_images_is_refused(tiny_model, dataset, tmp_path):
    """Two validation images "agree 100 %" and prove nothing (issue 25, item 8): refused, saying how many."""
    few = tmp_path / "few"
    for label in ("NORMAL", "PNEUMONIA"):
        (few / label).mkdir(parents=True)
        src = sorted((dataset / "val" / label).iterdir())[0]
        (few / label / src.name).write_bytes(src.read_bytes())
    lenient = ParityBounds(max_auc_drop=1.0, min_agreement=0.0, max_flag_rate_change=1.0)  # min_images: default
    assert lenient.min_images == 100
    out = tmp_path / "few.pneumo"
    with pytest.raises(QuantizationError, match=r"parity was measured on 2 validation images only \(at least 100"):
        quantize_model(tiny_model, out, dataset / "train", validation_data=few, bounds=lenient)
    assert not out.exists()
    _, parity = quantize_model(tiny_model, out, dataset / "train", validation_data=dataset, bounds=LOOSE)
    assert parity.n == 40 and "on 40 validation images" in parity.summary()
