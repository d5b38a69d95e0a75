"""Metrics, confidence intervals and evaluation reports (report.txt, metrics.json, predictions.csv, plots).

Binary truth ``y`` is 1 for pneumonia; ``prob`` is the probability of pneumonia; a case is predicted positive when
``prob >= threshold``. The subtype task adds ``y_class`` (index into ``class_names``) and ``probs`` (N x C).

The counting itself (metrics at a threshold, for the point estimate and every bootstrap resample) is
:mod:`pneumo.evaluation.metrics`. Intervals (:func:`confidence_intervals`): the rates that are proportions of a fixed
count (accuracy, sensitivity, specificity, precision, NPV) get Wilson score intervals, which stay honest at small n and
at 0 or 1 (a bootstrap of 20 pneumonia images that were all caught is "1.000-1.000"; Wilson says 0.839-1.000);
AUCs, F1, ECE and Brier get the class-stratified percentile bootstrap.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo import atomic
from pneumo.decision import decision_codes
from pneumo.evaluation.intervals import Interval, bootstrap, wilson
from pneumo.evaluation.metrics import (
    CI_METRICS,
    RELIABILITY_BINS,
    binary_metrics,
    confusion,
    prepare,
    reliability_bins,
    weighted_metrics,
)
from pneumo.labels import BINARY_CLASSES, NORMAL, PNEUMONIA

DISPLAY_NAMES = {NORMAL: "Healthy", PNEUMONIA: "Pneumonia", "BACTERIA": "Bacterial", "VIRUS": "Viral"}
# Proportions of a count fixed by the test set (or by the predictions, for precision and NPV): the metric name,
# then which confusion counts form the numerator and the denominator.
PROPORTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "precision": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
}
CI_METHOD = (
    "Wilson score interval for accuracy, sensitivity, specificity, precision and NPV; percentile bootstrap, "
    "resampled within each true class (class counts fixed), for ROC AUC, PR AUC, F1, ECE and Brier"
)


def display_names(class_names: Sequence[str]) -> list[str]:
    """Names for reports and plots: NORMAL -> Healthy, PNEUMONIA -> Pneumonia, others title-cased."""
    return [DISPLAY_NAMES.get(n.upper(), n.title()) for n in class_names]


def _resample_counts(rng: np.random.Generator, groups: list[np.ndarray], n: int, b: int) -> np.ndarray:
    """B x n draw counts, resampling each group of case indices with replacement to its own size."""
    idx = np.concatenate([g[rng.integers(0, g.size, size=(b, g.size))] for g in groups if g.size], axis=1)
    flat = idx + (np.arange(b) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_intervals(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    stratified: bool = True,
    n_bins: int = RELIABILITY_BINS,
) -> dict[str, Interval]:
    """Percentile bootstrap :class:`~pneumo.evaluation.intervals.Interval` at level ``1 - alpha`` for each metric in
    :data:`CI_METRICS`.

    With ``stratified=True`` (the default) positives and negatives are resampled separately, each to its own count:
    the class mix of a test set is fixed by how it was built (Kermany's test set is 234 normal / 390 pneumonia), so
    the interval describes uncertainty in the model's performance, not in the prevalence, and no resample can lose
    a class. With ``stratified=False`` cases are drawn from the whole set and resamples with one class are skipped.
    The threshold stays fixed (it was chosen on validation data). Deterministic for a given ``seed``.
    """
    y, prob = prepare(y, prob)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == 0), np.flatnonzero(y == 1)] if stratified else [np.arange(y.size)]
    chunk = max(1, 250_000 // max(y.size, 1))  # bounds memory to ~2 MB of counts per step whatever N is
    resamples = (_resample_counts(rng, groups, y.size, min(chunk, n_boot - start)) for start in range(0, n_boot, chunk))
    return bootstrap(
        lambda counts: weighted_metrics(y, prob, threshold, counts, n_bins),
        resamples,
        y.size,
        keys=CI_METRICS,
        keep=lambda m: (m["n_pos"] > 0) & (m["n_neg"] > 0),
        alpha=alpha,
    )


def bootstrap_ci(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    stratified: bool = True,
    n_bins: int = RELIABILITY_BINS,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_intervals` as ``(lo, hi)`` per metric."""
    ivs = bootstrap_intervals(y, prob, threshold, n_boot, seed, alpha, stratified=stratified, n_bins=n_bins)
    return {k: iv.bounds for k, iv in ivs.items()}


def proportion_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` at level ``1 - alpha`` for ``k`` successes in ``n`` trials; ``(nan,
    nan)`` when ``n`` is 0 (:func:`pneumo.evaluation.intervals.wilson`)."""
    return wilson(k, n, alpha).bounds


def proportion_intervals(y: np.ndarray, prob: np.ndarray, threshold: float, alpha: float = 0.05) -> dict[str, Interval]:
    """Wilson intervals for each metric in :data:`PROPORTIONS` at ``threshold``."""
    tn, fp, fn, tp = confusion(y, prob, threshold)
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    return {
        name: wilson(sum(counts[c] for c in num), sum(counts[c] for c in den), alpha)
        for name, (num, den) in PROPORTIONS.items()
    }


def metric_intervals(
    y: np.ndarray, prob: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Interval]:
    """An :class:`~pneumo.evaluation.intervals.Interval` at level ``1 - alpha`` for each metric in
    :data:`CI_METRICS`: Wilson for the proportions (:data:`PROPORTIONS`), the class-stratified bootstrap
    (:func:`bootstrap_intervals`) for the rest."""
    y, prob = prepare(y, prob)
    ivs = bootstrap_intervals(y, prob, threshold, n_boot=n_boot, seed=seed, alpha=alpha)
    ivs.update(proportion_intervals(y, prob, threshold, alpha))
    return ivs


def confidence_intervals(
    y: np.ndarray, prob: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """:func:`metric_intervals` as ``(lo, hi)`` per metric (the shape of ``metrics.json``'s ``ci``)."""
    return {k: iv.bounds for k, iv in metric_intervals(y, prob, threshold, n_boot, seed, alpha).items()}


def _fmt_ci(value: float, ci: tuple[float, float] | None) -> str:
    if ci is None:
        return f"{value:.3f}"
    return Interval(value, *ci).text()


def classification_report_text(
    y: np.ndarray,
    pred: np.ndarray,
    target_names: Sequence[str] = ("Healthy", "Pneumonia"),
    *,
    prob: np.ndarray | None = None,
    threshold: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    ci: Mapping[str, tuple[float, float]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> str:
    """scikit-learn's classification report (as the original notebooks printed it), then summary lines.

    When ``prob`` and ``threshold`` are given, lines for sensitivity, specificity, ROC AUC, PR AUC and ECE follow,
    each with its 95 % CI (:func:`confidence_intervals`, computed here unless ``metrics`` / ``ci`` are passed in), and
    the threshold.
    """
    from sklearn.metrics import classification_report

    y = np.asarray(y).astype(np.int64)
    labels = list(range(len(target_names)))
    text = classification_report(
        y, np.asarray(pred).astype(np.int64), labels=labels, target_names=list(target_names), digits=3, zero_division=0
    )
    if prob is None or threshold is None:
        return text
    metrics = metrics if metrics is not None else binary_metrics(y, prob, threshold)
    ci = ci if ci is not None else confidence_intervals(y, prob, threshold, n_boot=n_boot, seed=seed)
    lines = [text.rstrip(), ""]
    for key, label in [
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("roc_auc", "ROC AUC"),
        ("pr_auc", "PR AUC"),
        ("ece", "ECE"),
    ]:
        lines.append(f"{label:>13}  {_fmt_ci(metrics[key], ci.get(key))}")
    lines.append(f"{'threshold':>13}  {threshold:.4f}  (predict {target_names[-1]} when p >= threshold)")
    return "\n".join(lines) + "\n"


def multiclass_metrics(
    y_class: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Subtype metrics: accuracy with its Wilson interval, per-class precision / recall / F1 / support and
    one-vs-rest ROC AUC, macro F1 and AUC, and the C x C confusion matrix (rows true, columns predicted).

    ``n_boot`` and ``seed`` are accepted for callers of the bootstrap version and unused."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_class = np.asarray(y_class).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(class_names)
    pred = probs.argmax(axis=1)
    correct = (pred == y_class).astype(np.float64)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_class, pred, labels=list(range(c)), zero_division=0
    )
    per_class = {}
    for i, name in enumerate(class_names):
        truth = y_class == i
        auc = float(roc_auc_score(truth, probs[:, i])) if 0 < truth.sum() < truth.size else float("nan")
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": auc,
        }
    return {
        "class_names": list(class_names),
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "accuracy_ci": wilson(int(correct.sum()), int(correct.size), alpha).bounds,
        "macro_f1": float(np.mean(f1)),
        "macro_roc_auc": float(np.nanmean([v["roc_auc"] for v in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_class, pred, labels=list(range(c))).tolist(),
        "n": int(y_class.size),
    }


def multiclass_report_text(
    y_class: np.ndarray, probs: np.ndarray, class_names: Sequence[str], metrics: Mapping[str, Any] | None = None
) -> str:
    """The subtype report: scikit-learn's layout over the C classes, then accuracy CI and one-vs-rest AUCs."""
    metrics = metrics if metrics is not None else multiclass_metrics(y_class, probs, class_names)
    names = display_names(class_names)
    pred = np.asarray(probs).argmax(axis=1)
    lines = [classification_report_text(y_class, pred, names).rstrip(), ""]
    lines.append(f"{'accuracy':>13}  {_fmt_ci(metrics['accuracy'], tuple(metrics['accuracy_ci']))}")
    for name, shown in zip(class_names, names, strict=True):
        lines.append(f"{'AUC ' + shown:>13}  {metrics['per_class'][name]['roc_auc']:.3f}  (one-vs-rest)")
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy scalars to Python, tuples to lists, NaN and infinities to null (not valid JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


_SUBTYPE_COLUMNS = {"NORMAL": "p_normal", "BACTERIA": "p_bacterial", "VIRUS": "p_viral"}


def _subtype_column(class_name: str) -> str:
    """``pneumo predict``'s column for a subtype class's probability."""
    return _SUBTYPE_COLUMNS.get(class_name.upper(), f"p_{class_name.lower()}")


def _domain_cells(p: Any) -> dict[str, str]:
    """``pneumo predict``'s domain columns of one prediction, formatted as predict writes them."""
    cells = {}
    if hasattr(p, "domain"):
        cells["domain"] = p.domain or ""
    cells["in_domain"] = "" if p.in_domain is None else "true" if p.in_domain else "false"
    cells["domain_score"] = "" if p.domain_score is None else f"{p.domain_score:.6f}"
    return cells


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Evaluation:
    """What an evaluation found: ``metrics.json``'s content, ``report.txt``'s text and ``predictions.csv``'s rows."""

    metrics: dict[str, Any]
    report: str
    rows: list[dict[str, Any]]


def compute_evaluation(
    *,
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    paths: Sequence[str | Path] | None,
    class_names: Sequence[str] = BINARY_CLASSES,
    probs_multiclass: np.ndarray | None = None,
    y_class: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    model_meta: Mapping[str, Any] | None = None,
    predictions: Sequence[Any] | None = None,
) -> Evaluation:
    """Metrics with bootstrap intervals, the classification report and one row per case (no files).

    ``class_names`` are the model's classes (binary or subtype); the subtype part is evaluated when both
    ``probs_multiclass`` and ``y_class`` are given. ``model_meta`` (e.g. :func:`pneumo.modelfile.meta_json`) is
    stored under ``"model"`` so that evaluations can be compared. ``predictions`` (the
    :class:`pneumo.inference.Prediction` of each case) add predict's domain columns to the rows.

    The rows carry ``pneumo predict``'s columns under its names (path, probability, prediction, threshold, the
    domain columns, p_normal / p_bacterial / p_viral), then the truth: label, correct, and for the subtype
    task true_class and pred_class."""
    y, prob = prepare(y, prob)
    pred = decision_codes(prob, threshold)
    metrics: dict[str, Any] = {"task": "binary", **binary_metrics(y, prob, threshold)}
    ci = confidence_intervals(y, prob, threshold, n_boot=n_boot, seed=seed)
    metrics.update(ci=ci, ci_method=CI_METHOD, ci_level=0.95, n_boot=n_boot, seed=seed)
    rel = reliability_bins(prob, y)
    metrics["reliability"] = {k: rel[k] for k in ("confidence", "accuracy", "count")}
    report = classification_report_text(
        y, pred, display_names(BINARY_CLASSES), prob=prob, threshold=threshold, metrics=metrics, ci=ci
    )
    sub = probs_multiclass is not None and y_class is not None
    if sub:
        probs_multiclass = np.asarray(probs_multiclass, dtype=np.float64)
        y_class = np.asarray(y_class).astype(np.int64)
        metrics["task"] = "subtype"
        metrics["subtype"] = multiclass_metrics(y_class, probs_multiclass, class_names, n_boot=n_boot, seed=seed)
        report += "\nSubtype\n\n" + multiclass_report_text(y_class, probs_multiclass, class_names, metrics["subtype"])
    if model_meta is not None:
        metrics["model"] = dict(model_meta)

    paths_s = [str(p) for p in paths] if paths is not None else [str(i) for i in range(y.size)]
    rows = []
    for i in range(y.size):
        # predict's columns first, under predict's names (pneumo.inference.columns), then the truth
        row: dict[str, Any] = {
            "path": paths_s[i],
            "probability": f"{prob[i]:.6f}",
            "prediction": BINARY_CLASSES[pred[i]],
            "threshold": f"{threshold:.6f}",
        }
        if predictions is not None:
            row.update(_domain_cells(predictions[i]))
        if sub:
            row.update({_subtype_column(c): f"{probs_multiclass[i, j]:.6f}" for j, c in enumerate(class_names)})
        row["label"] = BINARY_CLASSES[y[i]]
        row["correct"] = int(pred[i] == y[i])
        if sub:
            row["true_class"] = class_names[y_class[i]]
            row["pred_class"] = class_names[int(probs_multiclass[i].argmax())]
        rows.append(row)
    return Evaluation(metrics=metrics, report=report, rows=rows)


def write_evaluation(
    out_dir: str | Path,
    *,
    images: Sequence[np.ndarray] | None = None,
    **evaluation: Any,
) -> dict[str, Any]:
    """:func:`compute_evaluation` (same keyword arguments), written as ``report.txt``, ``metrics.json``,
    ``predictions.csv`` and PNG plots into ``out_dir``; ``images`` (2-D arrays aligned with ``paths``) adds a
    gallery. Returns what ``metrics.json`` holds."""
    from pneumo.evaluation import plots

    ev = compute_evaluation(**evaluation)
    metrics, rows = ev.metrics, ev.rows
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y, prob = prepare(evaluation["y"], evaluation["prob"])
    threshold = evaluation["threshold"]
    files = {"report": out / "report.txt", "metrics": out / "metrics.json", "predictions": out / "predictions.csv"}
    files["confusion"] = plots.plot_confusion_matrix(
        metrics["confusion_matrix"], display_names(BINARY_CLASSES), out / "confusion_matrix.png"
    )
    files["roc"] = plots.plot_roc(y, prob, out / "roc.png", threshold=threshold)
    files["pr"] = plots.plot_pr(y, prob, out / "pr.png", threshold=threshold)
    files["reliability"] = plots.plot_reliability(prob, y, out / "reliability.png")
    sub = "subtype" in metrics
    if sub:
        files["confusion_subtype"] = plots.plot_confusion_matrix(
            metrics["subtype"]["confusion_matrix"],
            display_names(evaluation.get("class_names", BINARY_CLASSES)),
            out / "confusion_matrix_subtype.png",
            title="Subtype confusion matrix",
        )
    if images is not None:
        # The binary truth and decision, so that "N mistakes of M" counts what the accuracy counts (a bacterial
        # image called viral is no mistake of the NORMAL / PNEUMONIA decision).
        true_n = display_names([r["label"] for r in rows])
        pred_n = display_names([r["prediction"] for r in rows])
        files["gallery"] = plots.plot_gallery(
            images, true_n, pred_n, prob, out / "gallery.png", seed=evaluation.get("seed", 0)
        )

    metrics["files"] = {k: p.name for k, p in files.items()}
    metrics = _jsonable(metrics)
    atomic.write_text(files["report"], ev.report)
    _write_predictions(files["predictions"], rows)
    atomic.write_text(files["metrics"], json.dumps(metrics, indent=2))
    return metrics
