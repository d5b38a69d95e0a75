"""Counting: confusion counts, rates, ROC / PR areas, ECE and reliability bins, in one place.

Binary truth ``y`` is 1 for pneumonia; ``prob`` is the probability of pneumonia; a case is predicted positive when
``prob >= threshold``. Point estimates and bootstrap replicates go through the same weighted-count code
(:func:`weighted_metrics`): a bootstrap resample is a vector of how often each case was drawn, so 1,000 resamples
are a few matrix products instead of 1,000 calls into scikit-learn. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumo.decision import is_positive

# Equal-width bins of the pneumonia probability for ECE and reliability diagrams, everywhere (the model file's ECE,
# evaluation, adapt, the shift suite's per-condition bins).
RELIABILITY_BINS = 15
CI_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "roc_auc", "pr_auc", "ece", "brier")


def bin_index(prob: np.ndarray, n_bins: int = RELIABILITY_BINS) -> np.ndarray:
    """Equal-width bin of each probability in [0, 1]; 1.0 falls in the last bin."""
    idx = np.floor(np.asarray(prob, dtype=np.float64) * n_bins).astype(np.int64)
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(prob: np.ndarray, y: np.ndarray, n_bins: int = RELIABILITY_BINS) -> dict[str, np.ndarray]:
    """Per-bin mean predicted probability (``confidence``), observed pneumonia rate (``accuracy``) and ``count``.

    Bins are equal-width on the pneumonia probability; empty bins have NaN confidence and accuracy.
    Also returns the bin ``edges`` (n_bins + 1).
    """
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    idx = bin_index(prob, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, sum_p / count, np.nan)
        acc = np.where(count > 0, sum_y / count, np.nan)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "confidence": conf, "accuracy": acc, "count": count}


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, n_bins: int = RELIABILITY_BINS) -> float:
    """ECE of the binary pneumonia probability: ``sum_b n_b / N * |mean(prob)_b - mean(y)_b|``, equal-width bins."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    if prob.size == 0:
        return float("nan")
    return float(weighted_ece(prob, np.asarray(y, dtype=np.float64).ravel(), np.ones((1, prob.size)), n_bins)[0])


def weighted_ece(prob: np.ndarray, y: np.ndarray, counts: np.ndarray, n_bins: int = RELIABILITY_BINS) -> np.ndarray:
    """ECE for each row of ``counts`` (B x N: how many times each case is in that resample)."""
    gap = counts @ (np.eye(n_bins)[bin_index(prob, n_bins)] * (prob - y)[:, None])  # B x bins: sum of prob - y
    return np.abs(gap).sum(axis=1) / counts.sum(axis=1)


def confusion(y: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(tn, fp, fn, tp)`` at ``threshold``: positive when ``prob >= threshold``, ``y`` 1 for pneumonia."""
    y = np.asarray(y).astype(bool)
    pred = is_positive(prob, threshold)
    return int(np.sum(~pred & ~y)), int(np.sum(pred & ~y)), int(np.sum(~pred & y)), int(np.sum(pred & y))


def operating_point(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at ``threshold`` (positive when ``prob >= threshold``); undefined rates are NaN."""
    tn, fp, fn, tp = confusion(y, prob, threshold)

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def weighted_metrics(
    y: np.ndarray, prob: np.ndarray, threshold: float, counts: np.ndarray, n_bins: int = RELIABILITY_BINS
) -> dict[str, np.ndarray]:
    """Binary metrics for each row of ``counts`` (B x N: how many times each case is in that resample).

    AUC and average precision are computed on cases grouped by tied probability, which gives exactly
    scikit-learn's ``roc_auc_score`` (ties count one half) and ``average_precision_score`` (step-wise, no
    interpolation).
    """
    y = y.astype(bool)
    pred = is_positive(prob, threshold)
    yf = y.astype(np.float64)
    n = counts.sum(axis=1)
    n_pos = counts @ yf
    n_neg = n - n_pos
    tp = counts @ (y & pred).astype(np.float64)
    fp = counts @ (~y & pred).astype(np.float64)
    fn, tn = n_pos - tp, n_neg - fp

    order = np.argsort(prob, kind="stable")
    sp = prob[order]
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    w = counts[:, order]
    pos_g = np.add.reduceat(w * yf[order], starts, axis=1)  # B x groups, ascending probability
    neg_g = np.add.reduceat(w * (1.0 - yf[order]), starts, axis=1)
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    tp_cum = np.cumsum(pos_g[:, ::-1], axis=1)  # descending thresholds for the PR curve
    fp_cum = np.cumsum(neg_g[:, ::-1], axis=1)

    with np.errstate(invalid="ignore", divide="ignore"):
        precision_at = np.where(tp_cum + fp_cum > 0, tp_cum / (tp_cum + fp_cum), 0.0)
        return {
            "accuracy": (tp + tn) / n,
            "sensitivity": tp / n_pos,
            "specificity": tn / n_neg,
            "precision": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "roc_auc": (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1) / (n_pos * n_neg),
            "pr_auc": (pos_g[:, ::-1] * precision_at).sum(axis=1) / n_pos,
            "ece": weighted_ece(prob, yf, counts, n_bins),
            "brier": counts @ (prob - yf) ** 2 / n,
            "n_pos": n_pos,
            "n_neg": n_neg,
        }


def prepare(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != prob.shape:
        raise ValueError(f"y and prob differ in length ({y.size} vs {prob.size})")
    return y, prob


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float, n_bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision (PPV), NPV, F1, ROC AUC, PR AUC (average precision), ECE,
    Brier score, counts and the confusion matrix ``[[tn, fp], [fn, tp]]`` at ``threshold``.

    Undefined values (e.g. AUC with one class present) are NaN.
    """
    y, prob = prepare(y, prob)
    m = {k: float(v[0]) for k, v in weighted_metrics(y, prob, threshold, np.ones((1, y.size)), n_bins).items()}
    tn, fp, fn, tp = confusion(y, prob, threshold)
    out: dict[str, Any] = {k: m[k] for k in CI_METRICS}
    out.update(threshold=float(threshold), n=int(y.size), n_pos=tp + fn, n_neg=tn + fp)
    out["confusion_matrix"] = [[tn, fp], [fn, tp]]
    return out


def says_viral(p_bacterial: Any, p_viral: Any) -> np.ndarray:
    """The bacterial / viral call of pneumonia images: True (viral) where ``p_viral`` exceeds ``p_bacterial``.

    The pneumonia probability is shared out in the subtype head's own ratio (:mod:`pneumo.probability`), so the
    call is the same whatever the binary decision; an image the binary head calls normal still gets one."""
    return np.asarray(p_viral, dtype=np.float64) > np.asarray(p_bacterial, dtype=np.float64)


def bacterial_vs_viral_accuracy(p_bacterial: Any, p_viral: Any, viral: Any) -> float:
    """Share of pneumonia images whose bacterial / viral call (:func:`says_viral`) matches ``viral`` (True for a
    viral image), as Kermany et al. 2018 reported it; NaN for no images."""
    viral = np.asarray(viral, dtype=bool)
    return float((says_viral(p_bacterial, p_viral) == viral).mean()) if viral.size else float("nan")


def block_figures(y: Any, prob: Any, blocks: Sequence[str], threshold: float) -> dict[str, Any]:
    """Figures per held-out acquisition block and the worst block, at ``threshold``.

    A block of a block split holds the patients of one class (a numbering sequence numbers one class), so each
    block has one rate: specificity for a block of normal images, sensitivity for a block of pneumonia images;
    accuracy is that same rate. ``worst_specificity`` / ``worst_sensitivity`` name their block. Rows whose block is
    "" (not held out by block) are left out; "random" (the fallback for names outside every sequence) is its own
    group.
    """
    y, prob = prepare(y, prob)
    blocks = np.asarray(list(blocks), dtype=object)
    if len(blocks) != len(y):
        raise ValueError(f"{len(blocks)} block names for {len(y)} images")
    per_block: dict[str, dict[str, Any]] = {}
    for name in sorted({b for b in blocks if b}, key=_block_order):
        rows = blocks == name
        op = operating_point(y[rows], prob[rows], threshold)
        per_block[name] = {
            "n": int(rows.sum()),
            "n_pneumonia": int(y[rows].sum()),
            "accuracy": float(np.mean(is_positive(prob[rows], threshold) == y[rows].astype(bool))),
            "sensitivity": op["sensitivity"],
            "specificity": op["specificity"],
            "mean_probability": float(prob[rows].mean()),
        }
    out: dict[str, Any] = {"threshold": float(threshold), "per_block": per_block}
    for rate in ("specificity", "sensitivity"):
        scored = [(v[rate], k) for k, v in per_block.items() if np.isfinite(v[rate])]
        if scored:
            value, name = min(scored)
            out[f"worst_{rate}"] = {"value": float(value), "block": name, "n": per_block[name]["n"]}
    return out


def _block_order(name: str) -> tuple:
    """ "NORMAL IM 115-149" sorts by class, sequence, then first patient number (numerically)."""
    parts = name.rsplit(" ", 1)
    first = parts[-1].split("-")[0]
    return (parts[0], int(first) if first.isdigit() else -1, name)
