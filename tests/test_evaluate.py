"""Evaluation metrics, intervals (Wilson for rates, bootstrap for the rest), reports and the files
write_evaluation leaves behind."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from pneumo.evaluation.metrics import CI_METRICS, binary_metrics, expected_calibration_error, weighted_metrics
from pneumo.evaluation.report import (
    PROPORTIONS,
    bootstrap_ci,
    classification_report_text,
    compute_evaluation,
    confidence_intervals,
    multiclass_metrics,
    proportion_ci,
    write_evaluation,
)

PREDICT_COLUMNS = ["path", "probability", "prediction", "threshold"]  # predict's first columns


def _known():
    """40 pneumonia (30 caught), 60 healthy (50 cleared) at threshold 0.5."""
    y = np.r_[np.ones(40), np.zeros(60)].astype(int)
    prob = np.r_[np.linspace(0.55, 0.95, 30), np.linspace(0.05, 0.45, 10), np.linspace(0.0, 0.4, 50), np.full(10, 0.6)]
    return y, prob


def _synthetic(n, seed=0, c=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounding makes ties, which AUC must handle
    return y, prob


def test_binary_metrics_golden():
    y, prob = _known()
    m = binary_metrics(y, prob, 0.5)
    assert m["confusion_matrix"] == [[50, 10], [10, 30]]
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(50 / 60)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.75)
    assert m["npv"] == pytest.approx(50 / 60)
    assert m["f1"] == pytest.approx(0.75)
    assert (m["n"], m["n_pos"], m["n_neg"]) == (100, 40, 60)


def test_binary_metrics_match_sklearn_with_ties():
    y, prob = _synthetic(400, seed=1)
    m = binary_metrics(y, prob, 0.5)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, prob), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, prob), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, prob >= 0.5), abs=1e-12)
    assert m["ece"] == pytest.approx(expected_calibration_error(prob, y), abs=1e-12)


def test_weighted_metrics_equal_metrics_of_the_expanded_resample():
    y, prob = _synthetic(150, seed=2)
    idx = np.random.default_rng(3).integers(0, y.size, size=y.size)
    counts = np.bincount(idx, minlength=y.size)[None, :].astype(float)
    fast = weighted_metrics(y, prob, 0.5, counts)
    slow = binary_metrics(y[idx], prob[idx], 0.5)
    for k in CI_METRICS:
        assert fast[k][0] == pytest.approx(slow[k], abs=1e-12), k


def test_one_class_gives_nan_auc_not_a_crash():
    m = binary_metrics(np.ones(5), np.linspace(0.1, 0.9, 5), 0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(0.6)
    ci = bootstrap_ci(np.ones(5), np.linspace(0.1, 0.9, 5), 0.5, n_boot=20)
    assert all(np.isnan(v).all() for v in ci.values())


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (200, 2000):
        y, prob = _synthetic(n, seed=4)
        m = binary_metrics(y, prob, 0.5)
        ci = bootstrap_ci(y, prob, 0.5, n_boot=200, seed=0)
        assert set(ci) == set(CI_METRICS)
        for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc"):
            lo, hi = ci[k]
            assert lo <= m[k] <= hi, k
        widths.append({k: ci[k][1] - ci[k][0] for k in ci})
    for k in ("accuracy", "sensitivity", "roc_auc", "ece"):
        assert widths[1][k] < widths[0][k] / 1.8, k  # ~1/sqrt(10) in theory


def test_bootstrap_is_deterministic_and_plain_mode_skips_one_class_resamples():
    y, prob = _synthetic(100, seed=5)
    assert bootstrap_ci(y, prob, 0.5, n_boot=50, seed=7) == bootstrap_ci(y, prob, 0.5, n_boot=50, seed=7)
    y = np.r_[1, np.zeros(9)].astype(int)  # most plain resamples of this lose the only positive
    prob = np.linspace(0.1, 0.9, 10)
    ci = bootstrap_ci(y, prob, 0.5, n_boot=200, stratified=False)
    assert np.isfinite(ci["roc_auc"]).all()


def test_bootstrap_is_fast():
    y, prob = _synthetic(500, seed=6)
    start = time.perf_counter()
    bootstrap_ci(y, prob, 0.5, n_boot=1000)
    assert time.perf_counter() - start < 10  # ~0.3 s on one core; generous for a shared machine


def test_classification_report_text():
    y, prob = _known()
    text = classification_report_text(y, (prob >= 0.5).astype(int), prob=prob, threshold=0.5, n_boot=100)
    for needle in ("Healthy", "Pneumonia", "precision", "macro avg", "weighted avg", "accuracy"):
        assert needle in text
    for needle in ("sensitivity", "specificity", "ROC AUC", "PR AUC", "ECE"):
        line = next(line for line in text.splitlines() if line.strip().startswith(needle))
        assert "95% CI" in line
    assert "threshold" in text and "0.5000" in text
    assert "0.750" in text  # the sensitivity / Pneumonia recall


def test_multiclass_metrics_golden():
    names = ["NORMAL", "BACTERIA", "VIRUS"]
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 2, 1, 0])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), pred] = 0.8
    m = multiclass_metrics(y, probs, names, n_boot=200)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 1, 2]]
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class"]["VIRUS"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["BACTERIA"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["NORMAL"]["support"] == 3
    assert m["per_class"]["NORMAL"]["roc_auc"] == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    lo, hi = m["accuracy_ci"]
    assert lo <= 0.6 <= hi


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_write_evaluation_binary(tmp_path):
    y, prob = _synthetic(120, seed=8)
    paths = [f"img_{i}.jpeg" for i in range(y.size)]
    images = [np.random.default_rng(i).uniform(size=(32, 40)) for i in range(y.size)]
    m = write_evaluation(
        tmp_path / "eval", y=y, prob=prob, threshold=0.5, paths=paths, class_names=["NORMAL", "PNEUMONIA"],
        images=images, n_boot=200,
    )  # fmt: skip
    out = tmp_path / "eval"
    for name in ("report.txt", "metrics.json", "predictions.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png", "gallery.png"):
        _check_png(out / name)
    data = json.loads((out / "metrics.json").read_text())
    assert data == m
    for key in (*CI_METRICS, "threshold", "n", "n_pos", "n_neg", "confusion_matrix", "ci", "files", "reliability"):
        assert key in data, key
    assert set(data["ci"]) == set(CI_METRICS) and len(data["ci"]["roc_auc"]) == 2
    assert data["task"] == "binary" and "subtype" not in data
    report = (out / "report.txt").read_text()
    assert "Healthy" in report and "Pneumonia" in report and "95% CI" in report
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == y.size
    assert list(rows[0]) == ["path", "probability", "prediction", "threshold", "label", "correct"]
    assert rows[0]["path"] == "img_0.jpeg" and rows[0]["label"] in ("NORMAL", "PNEUMONIA")
    assert sum(int(r["correct"]) for r in rows) == round(m["accuracy"] * y.size)


def test_write_evaluation_subtype(tmp_path):
    rng = np.random.default_rng(9)
    names = ["NORMAL", "BACTERIA", "VIRUS"]
    y_class = rng.integers(0, 3, size=90)
    logits = rng.normal(size=(90, 3)) + 2 * np.eye(3)[y_class]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = write_evaluation(
        tmp_path, y=(y_class > 0).astype(int), prob=1 - probs[:, 0], threshold=0.5, paths=None, class_names=names,
        probs_multiclass=probs, y_class=y_class, n_boot=200, model_meta={"arch": "tiny"},
    )  # fmt: skip
    assert m["task"] == "subtype" and m["model"]["arch"] == "tiny"
    assert np.array(m["subtype"]["confusion_matrix"]).sum() == 90
    _check_png(tmp_path / "confusion_matrix_subtype.png")
    assert not (tmp_path / "gallery.png").exists()
    report = (tmp_path / "report.txt").read_text()
    assert "Bacterial" in report and "Viral" in report
    with (tmp_path / "predictions.csv").open() as f:
        header = next(csv.reader(f))
    # predict's names for the subtype probabilities, then the truth
    assert header == [*PREDICT_COLUMNS[:4], "p_normal", "p_bacterial", "p_viral", "label", "correct", "true_class",
                      "pred_class"]  # fmt: skip


def test_write_evaluation_with_one_class_does_not_crash(tmp_path):
    prob = np.linspace(0.2, 0.9, 30)
    m = write_evaluation(tmp_path, y=np.ones(30, dtype=int), prob=prob, threshold=0.5, paths=None, n_boot=50)
    assert m["roc_auc"] is None and m["sensitivity"] == pytest.approx(np.mean(prob >= 0.5))
    _check_png(tmp_path / "roc.png")
    _check_png(tmp_path / "pr.png")


def test_shift_suite_behind_the_robustness_command(tiny_model, tmp_path, capsys):
    """``shift_suite`` runs the shift suite on the split's val rows (not its train rows) and on each extra folder
    (named parent/name), writes what it returns as JSON, and ``pneumo robustness`` prints exactly its table."""
    from conftest import xray
    from pneumo.cli import main
    from pneumo.data import make_split
    from pneumo.evaluation.robustness import format_table, shifted_validation
    from pneumo.evaluation.run import shift_suite
    from pneumo.inference import Predictor

    root, extra = tmp_path / "data", tmp_path / "more" / "fullres"
    for i, label in enumerate(["NORMAL", "PNEUMONIA"] * 4):
        for folder in (root, extra):
            (folder / label).mkdir(parents=True, exist_ok=True)
        xray(i, 48).save(root / label / f"person{i}_{label.lower()}_{i}.png")
    xray(20, 48).save(extra / "NORMAL" / "n.png")
    xray(21, 48).save(extra / "PNEUMONIA" / "p.png")
    rows, _ = make_split(root, tmp_path / "split.csv", val_fraction=0.5, seed=0, by="patient")
    val = sorted(root / r.path for r in rows if r.split == "val")
    assert 0 < len(val) < len(rows)

    results = shift_suite(root, tmp_path / "split.csv", model=tiny_model, extra=[extra], out_json=tmp_path / "r.json")
    y = np.array([p.parent.name == "PNEUMONIA" for p in val], dtype=int)
    expected = shifted_validation(Predictor.load(tiny_model), val, y, extra={"more/fullres": (
        sorted(extra.rglob("*.png")), np.array([0, 1]), ["none", "unknown"])},
        subtypes=["none" if p.parent.name == "NORMAL" else "unknown" for p in val])  # fmt: skip
    assert json.dumps(results, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert "more/fullres" in results
    assert (tmp_path / "r.json").read_text() == json.dumps(results, indent=2)

    args = ["robustness", str(root), "--split-csv", str(tmp_path / "split.csv"), "-m", str(tiny_model)]
    assert main([*args, "--extra", str(extra)]) == 0
    assert capsys.readouterr().out == format_table(results) + "\n"


# --- intervals: Wilson for proportions ---


@pytest.mark.parametrize("n", [1, 2, 5, 20, 57, 390])
def test_proportion_ci_is_scipys_wilson_interval(n):
    from scipy.stats import binomtest

    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        k = max(0, min(n, k))
        expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert proportion_ci(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert all(np.isnan(proportion_ci(0, 0)))


def test_rates_at_small_n_get_honest_intervals():
    """20 pneumonia images all caught: the bootstrap collapses to 1.000-1.000; the interval must not."""
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    prob = np.r_[np.full(20, 0.9), np.full(18, 0.1), np.full(2, 0.8)]
    ci = confidence_intervals(y, prob, 0.5, n_boot=200)
    lo, hi = ci["sensitivity"]
    assert hi == 1.0 and 0.80 < lo < 0.86  # Wilson: 0.839-1.000
    assert ci["specificity"] == pytest.approx(proportion_ci(18, 20))
    assert ci["accuracy"] == pytest.approx(proportion_ci(38, 40))
    assert ci["precision"] == pytest.approx(proportion_ci(20, 22)) and ci["npv"] == pytest.approx(proportion_ci(18, 18))
    assert set(ci) == set(CI_METRICS)  # AUC, F1, ECE, Brier still from the bootstrap
    assert ci["roc_auc"] == bootstrap_ci(y, prob, 0.5, n_boot=200)["roc_auc"]
    report = classification_report_text(y, (prob >= 0.5).astype(int), prob=prob, threshold=0.5, n_boot=200)
    line = next(line for line in report.splitlines() if line.strip().startswith("sensitivity"))
    assert "1.000  (95% CI 0.839-1.000)" in line


def test_every_proportion_is_counted_from_the_confusion_matrix():
    y, prob = _known()  # tn 50, fp 10, fn 10, tp 30
    ci = confidence_intervals(y, prob, 0.5, n_boot=50)
    expected = {"accuracy": (80, 100), "sensitivity": (30, 40), "specificity": (50, 60), "precision": (30, 40),
                "npv": (50, 60)}  # fmt: skip
    assert set(expected) == set(PROPORTIONS)
    for name, (k, n) in expected.items():
        assert ci[name] == pytest.approx(proportion_ci(k, n)), name


def test_subtype_accuracy_interval_is_wilson():
    names = ["NORMAL", "BACTERIA", "VIRUS"]
    y = np.array([0, 1, 2, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3  # all five right
    m = multiclass_metrics(y, probs, names)
    assert m["accuracy"] == 1.0 and m["accuracy_ci"] == pytest.approx(proportion_ci(5, 5))
    assert m["accuracy_ci"][0] < 0.6


def test_gallery_counts_binary_mistakes_not_subtype_errors(tmp_path, monkeypatch):
    """A subtype model that gets the NORMAL / PNEUMONIA decision right on every image but calls every bacterial
    image viral: the gallery's "N mistakes" is 0, as the binary accuracy says, not the subtype errors."""
    from pneumo.evaluation import plots

    seen = {}

    def fake_gallery(images, true_names, pred_names, scores, path, **kw):
        seen["mistakes"] = sum(t != p for t, p in zip(true_names, pred_names, strict=True))
        return path

    monkeypatch.setattr(plots, "plot_gallery", fake_gallery)
    names = ["NORMAL", "BACTERIA", "VIRUS"]
    y_class = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05]] * 2 + [[0.1, 0.2, 0.7]] * 4)  # bacterial called viral
    m = write_evaluation(
        tmp_path, y=(y_class > 0).astype(int), prob=1 - probs[:, 0], threshold=0.5, paths=None, class_names=names,
        probs_multiclass=probs, y_class=y_class, images=[np.zeros((8, 8))] * 6, n_boot=20,
    )  # fmt: skip
    assert m["accuracy"] == 1.0 and m["subtype"]["accuracy"] < 1.0
    assert seen["mistakes"] == 0


def test_prediction_rows_use_predicts_columns_and_values():
    """evaluate's predictions.csv rows carry predict's columns under predict's names, formatted as predict
    formats them (6 decimals, true/false), with the domain columns when the predictions are given."""
    from pneumo.inference import Prediction
    from pneumo.predict_io import columns

    y = np.array([0, 1, 1])
    prob = np.array([0.2, 0.7, 0.4])
    preds = [
        Prediction(path="a", threshold=0.5, probability=0.2, domain="typical", in_domain=True, domain_score=0.5),
        Prediction(path="b", threshold=0.5, probability=0.7, domain="not_pediatric", in_domain=False,
                   domain_score=0.01),
        Prediction(path="c", threshold=0.5, probability=0.4),
    ]  # fmt: skip
    ev = compute_evaluation(y=y, prob=prob, threshold=0.5, paths=["a", "b", "c"], n_boot=10, predictions=preds)
    predict_columns = [c for c in columns(subtypes=False) if c != "error"]
    assert list(ev.rows[0]) == [*predict_columns, "label", "correct"]
    assert ev.rows[1] == {
        "path": "b", "probability": "0.700000", "prediction": "PNEUMONIA", "threshold": "0.500000",
        "domain": "not_pediatric", "in_domain": "false", "domain_score": "0.010000", "label": "PNEUMONIA",
        "correct": 1,
    }  # fmt: skip
    assert ev.rows[2]["in_domain"] == "" and ev.rows[2]["prediction"] == "NORMAL" and ev.rows[2]["correct"] == 0
