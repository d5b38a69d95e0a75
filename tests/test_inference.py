"""pneumo.inference: calibrated probabilities straight from the ONNX graph, order, batching, TTA, and no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from conftest import encode_png, xray
from pneumo.errors import ConfigError
from pneumo.imaging import load_image
from pneumo.inference import Prediction, Predictor
from pneumo.modelfile import ModelFileError, load_model_file
from pneumo.preprocess import to_input
from pneumo.probability import calibrated_probability, subtype_probabilities


def _png(seed: int) -> bytes:
    return encode_png(xray(seed))


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.load(tiny_model)


def _reference(model_path, sources: list[bytes]) -> np.ndarray:
    """Logits computed by hand: the same loader and preprocessing, our own ONNX Runtime session."""
    mf = load_model_file(model_path)
    size = mf.meta.preprocessing.image_size
    x = to_input([load_image(s, size) for s in sources], mf.meta.preprocessing)
    sess = ort.InferenceSession(mf.onnx, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"image": x})[0]


def test_probability_is_the_calibrated_probability(tiny_model, predictor):
    sources = [_png(s) for s in range(5)]
    logits = _reference(tiny_model, sources)
    m = predictor.meta
    assert m.temperature != 1.0  # otherwise a predictor ignoring the temperature would pass
    expected = calibrated_probability(logits, m.temperature, m.calibration_bias)
    preds = list(predictor.predict_sources([(f"f{i}", s) for i, s in enumerate(sources)]))
    assert [p.path for p in preds] == [f"f{i}" for i in range(5)]
    np.testing.assert_allclose([p.probability for p in preds], expected, atol=1e-6)
    for p in preds:
        assert p.prediction == ("PNEUMONIA" if p.probability >= m.threshold else "NORMAL")
        assert p.threshold == m.threshold and p.error is None
        assert isinstance(p.in_domain, bool) and 0 <= p.domain_score <= 1
        assert p.p_normal is None  # binary model: no subtype columns


def test_subtype_probabilities(tiny_subtype_model):
    pred = Predictor.load(tiny_subtype_model)
    sources = [_png(s) for s in range(4)]
    logits = _reference(tiny_subtype_model, sources)
    m = pred.meta
    expected = subtype_probabilities(logits, m.temperature, m.calibration_bias)
    got = list(pred.predict_sources([(str(i), s) for i, s in enumerate(sources)]))
    np.testing.assert_allclose([[p.p_normal, p.p_bacterial, p.p_viral] for p in got], expected, atol=1e-6)
    for p in got:
        assert p.p_normal + p.p_bacterial + p.p_viral == pytest.approx(1.0)
        assert p.p_normal == pytest.approx(1 - p.probability)


def test_batch_size_does_not_change_results(predictor):
    sources = [(f"f{i:02d}", _png(i)) for i in range(20)]
    sources.insert(7, ("bad", b"not an image"))
    runs = {bs: list(predictor.predict_sources(sources, batch_size=bs, workers=w)) for bs, w in ((1, 1), (16, 2))}
    a, b = runs[1], runs[16]
    assert [p.path for p in a] == [p.path for p in b] == [n for n, _ in sources]
    for pa, pb in zip(a, b, strict=True):
        assert (pa.error is None) == (pb.error is None)
        if pa.error is None:
            assert pa.probability == pytest.approx(pb.probability, abs=1e-6)
            assert pa.domain_score == pytest.approx(pb.domain_score, abs=1e-6)
    assert a[7].error and a[7].probability is None and a[7].prediction is None


def test_tta_averages_logits_with_the_mirror(tiny_model, predictor):
    src = _png(3)
    img = load_image(src, predictor.size)
    logits = _reference(tiny_model, [src])
    mirrored = _reference(tiny_model, [encode_png((img[:, ::-1] * 255).round().astype(np.uint8))])
    m = predictor.meta
    expected = calibrated_probability((logits + mirrored) / 2, m.temperature, m.calibration_bias)[0]
    assert predictor.predict_one(src, "x", mirror=True).probability == pytest.approx(expected, abs=1e-5)
    assert predictor.predict_one(src, "x").probability != pytest.approx(expected, abs=1e-7)


def test_decision_at_the_threshold_is_pneumonia(tiny_model, predictor):
    """The README promises PNEUMONIA when the probability is *at or above* the threshold: set the threshold to
    exactly a predicted probability, then one float step above it."""
    img = load_image(_png(0), predictor.size)
    p = predictor.predict_arrays([img], ["x"])[0].probability
    at = Predictor.load(tiny_model, threshold=p).predict_arrays([img], ["x"])[0]
    assert at.probability == p and at.threshold == p
    assert at.prediction == "PNEUMONIA"
    above = Predictor.load(tiny_model, threshold=float(np.nextafter(p, 1.0))).predict_arrays([img], ["x"])[0]
    assert above.prediction == "NORMAL"


def test_test_time_scales_average_logits_and_match_training_side(tiny_model, tmp_path):
    """A model file with ``preprocessing.content_scales`` averages the logits of its content scales, exactly as the
    training side's calibration sees them (``finalize.infer_batches``); the domain guard reads the image as is."""
    import torch

    from pneumo.modelfile import save_model_file
    from pneumo.preprocess import rescale_content
    from pneumo.training.export import torch_twin
    from pneumo.training.finalize import infer_batches

    mf = load_model_file(tiny_model)
    pre = mf.meta.preprocessing.model_copy(update={"content_scales": [0.8, 1.0]})
    tta_path = save_model_file(tmp_path / "tta.pneumo", mf.model_copy(update={"meta": mf.meta.model_copy(
        update={"preprocessing": pre})}))  # fmt: skip
    plain, tta = Predictor.load(tiny_model), Predictor.load(tta_path)
    imgs = [load_image(_png(s), pre.image_size) for s in range(4)]
    got = tta.predict_arrays(imgs, list("abcd"))
    shrunk = [rescale_content(np.asarray(i, np.float32) / (255.0 if i.dtype == np.uint8 else 1.0), 0.8, 0.8)
              for i in imgs]  # fmt: skip
    lg_as_is = _logits(plain, imgs)
    lg_shrunk = _logits(plain, shrunk)
    expected = calibrated_probability((lg_as_is + lg_shrunk) / 2, mf.meta.temperature, mf.meta.calibration_bias)
    np.testing.assert_allclose([p.probability for p in got], expected, atol=1e-6)
    as_is = plain.predict_arrays(imgs, list("abcd"))
    assert [p.domain_score for p in got] == pytest.approx([p.domain_score for p in as_is])
    assert not np.allclose([p.probability for p in got], [p.probability for p in as_is])

    u8 = np.stack([np.asarray(i) if i.dtype == np.uint8 else np.round(i * 255).astype(np.uint8) for i in imgs])
    torch.manual_seed(0)
    logits, _, _ = infer_batches(torch_twin(mf), u8, pre)
    train_side = calibrated_probability(logits, mf.meta.temperature, mf.meta.calibration_bias)
    np.testing.assert_allclose(train_side, expected, atol=1e-4)


def _logits(predictor: Predictor, imgs) -> np.ndarray:
    return predictor.session.run(["logits"], {"image": to_input(imgs, predictor.meta.preprocessing)})[0]


def test_a_nan_probability_is_an_error_row_never_a_decision(tiny_model, monkeypatch):
    predictor = Predictor.load(tiny_model)
    real = predictor._run

    def nan_logits(x):
        logits, feats, sub = real(x)
        return np.full_like(logits, np.nan), feats, sub

    monkeypatch.setattr(predictor, "_run", nan_logits)
    (row,) = predictor.predict_arrays([load_image(_png(0), predictor.size)], ["x.png"])
    assert row.prediction is None and row.probability is None
    assert "no finite probability" in row.error


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_threshold_override_must_be_a_probability(tiny_model, bad):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Predictor.load(tiny_model, threshold=bad)


def test_threshold_override(tiny_model):
    assert Predictor.load(tiny_model, threshold=0.0).predict_one(_png(0), "x").prediction == "PNEUMONIA"
    assert Predictor.load(tiny_model, threshold=1.0).predict_one(_png(0), "x").prediction == "NORMAL"


def test_empty_and_bad_model(predictor, tmp_path):
    assert predictor.predict_arrays([], []) == []
    with pytest.raises(ModelFileError):
        Predictor.load(tmp_path)


def test_csv_json_and_api_rows_are_the_fields_of_prediction(predictor, tmp_path):
    """One schema: the CSV columns and JSON keys of ``pneumo predict`` are Prediction's output fields in order, and
    the API's answer extends them (``path`` named ``filename``, no ``error``); a field added there shows in all."""
    import csv
    import json

    from pneumo.inference import columns
    from pneumo.predict_io import write_predictions
    from pneumo.serve.app import PredictResponse

    row = [name for name, f in Prediction.model_fields.items() if not f.exclude]
    assert "log_odds" in Prediction.model_fields and "log_odds" not in row  # in-process only
    assert columns(subtypes=True, refer=True) == row
    preds = [predictor.predict_one(_png(0), "a.png"), Prediction(path="b.png", threshold=0.5, error="unreadable")]
    with open(write_predictions(preds, tmp_path / "p.csv", subtypes=True), newline="") as f:
        assert next(csv.reader(f)) == [c for c in row if c not in ("refer_low", "refer_high")]  # no band in force
    assert [list(r) for r in json.loads(write_predictions(preds, tmp_path / "p.json", subtypes=True).read_text())] == [
        [c for c in row if c not in ("refer_low", "refer_high")]
    ] * 2
    extra = [
        "image",
        "heatmap",
        "explain_error",
        "heatmap_note",
        "heatmap_field",
        "model_name",
        "model_version",
        "site_calibration",
        "disclaimer",
    ]
    api = PredictResponse(**dict(preds[0]), image="", heatmap=None, explain_error=None, model_name="m",
                          model_version="1", disclaimer="d")  # fmt: skip
    shared = ["filename" if c == "path" else c for c in row if c != "error"]
    assert list(api.model_dump(by_alias=True)) == shared + extra
    assert list(PredictResponse.model_json_schema(mode="serialization")["properties"]) == shared + extra
    assert set(shared + extra) == {  # what API clients rely on: these keys, no more, no fewer
        "filename", "probability", "prediction", "threshold", "refer_low", "refer_high", "domain", "in_domain",
        "domain_score",
        "p_normal", "p_bacterial", "p_viral", *extra,
    }  # fmt: skip


def _features(model_path, sources: list[bytes]) -> np.ndarray:
    mf = load_model_file(model_path)
    x = to_input([load_image(s, mf.meta.preprocessing.image_size) for s in sources], mf.meta.preprocessing)
    return ort.InferenceSession(mf.onnx, providers=["CPUExecutionProvider"]).run(["features"], {"image": x})[0]


def test_a_model_file_from_before_the_two_answers_answers_as_before(tiny_model, predictor):
    """One guard, one answer: flagged is not_pediatric (in_domain false, withheld), else typical; in_domain and
    domain_score are the old guard's, unchanged."""
    from pneumo.domain import domain_check

    meta = predictor.meta
    assert meta.domain_guard is not None and meta.domain_guard.pediatric is None
    # Images like the ones the tiny model's guard was fitted on (conftest.make_tiny_model), and ones that are not.
    size, rng = meta.preprocessing.image_size, np.random.default_rng(7)
    yy = np.linspace(0, 1, size)[:, None] * np.ones((1, size))
    like = [np.clip(0.3 + 0.4 * yy + 0.2 * rng.standard_normal((size, size)), 0, 1) for _ in range(6)]
    sources = [encode_png((a * 255).astype(np.uint8)) for a in like] + [_png(0), _png(1)]
    preds = list(predictor.predict_sources([(f"f{i}", s) for i, s in enumerate(sources)]))
    in_domain, score = domain_check(_features(tiny_model, sources), meta.domain_guard, predictor.model.arrays)
    assert [p.in_domain for p in preds] == in_domain.tolist()
    assert [p.domain_score for p in preds] == pytest.approx(score.tolist(), abs=1e-9)
    assert [p.domain for p in preds] == ["typical" if i else "not_pediatric" for i in in_domain]
    assert not all(in_domain) and any(in_domain)  # both answers occur, so the mapping is checked both ways


def test_an_error_row_has_no_domain(predictor):
    p = predictor.predict_one(b"not an image", "bad.png")
    assert p.error and p.domain is None and p.in_domain is None


def _with_pediatric(tiny_model, tmp_path, arrays_update: dict, drop: tuple[str, ...] = ()):
    from pneumo.modelfile import save_model_file

    mf = load_model_file(tiny_model)
    guard = mf.meta.domain_guard
    ped = {k.replace("domain_", "pediatric_"): v for k, v in mf.arrays.items()}
    arrays = {k: v for k, v in {**mf.arrays, **ped, **arrays_update}.items() if k not in drop}
    meta = mf.meta.model_copy(update={"domain_guard": guard.model_copy(update={"pediatric": guard})})
    return save_model_file(tmp_path / "m.pneumo", mf.model_copy(update={"meta": meta, "arrays": arrays}))


def test_a_pediatric_guard_reads_its_own_arrays(tiny_model, tmp_path):
    # The same statistics under both names: every image typical or not_pediatric, none unusual.
    pred = Predictor.load(_with_pediatric(tiny_model, tmp_path, {}))
    checker = ((np.indices((96, 96)).sum(0) // 12) % 2 * 255).astype(np.uint8)
    preds = list(pred.predict_sources([(f"f{i}", _png(i)) for i in range(6)] + [("c", encode_png(checker))]))
    assert {p.domain for p in preds} <= {"typical", "not_pediatric"}
    assert all(p.in_domain == (p.domain != "not_pediatric") for p in preds)


@pytest.mark.parametrize(("update", "drop"), [({}, ("pediatric_components",)), ({"pediatric_scale": np.zeros(2)}, ())])
def test_a_pediatric_guard_with_broken_arrays_is_refused(tiny_model, tmp_path, update, drop):
    path = _with_pediatric(tiny_model, tmp_path, update, drop)
    with pytest.raises(ModelFileError, match="pediatric_") as exc:
        Predictor.load(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# The seam between training and inference: what predict, serve, the DICOM node, batch and adapt load must not pull
# in torch or any training-only module of our own.
INFERENCE_PATH = [
    "pneumo.inference",
    "pneumo.cli",
    "pneumo.predict_io",
    "pneumo.modelfile",
    "pneumo.imaging",
    "pneumo.preprocess",
    "pneumo.domain",
    "pneumo.domain_fit",  # refitting the guard onto a model file needs its ONNX graph only, no torch
    "pneumo.explain.cam",
    "pneumo.serve.app",
    "pneumo.serve.upload_result",
    "pneumo.dicom.node",
    "pneumo.dicom.instance",
    "pneumo.batch.run",
    "pneumo.adapt.site",
]
TRAINING_ONLY = ("torch", "lightning", "timm", "pytorch_grad_cam", "pneumo.training")


@pytest.mark.parametrize("module", INFERENCE_PATH)
def test_inference_path_imports_nothing_from_training(module):
    code = f"import sys, {module}; print(sorted(set(sys.modules) & {set(TRAINING_ONLY)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_run_does_not_import_torch(tiny_model, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(_png(0))
    code = (
        "import sys; from pneumo.cli import main; "
        f"rc = main(['predict', {str(img)!r}, '--model', {str(tiny_model)!r}, '-o', {str(tmp_path / 'o.csv')!r}]); "
        "print(rc, sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
