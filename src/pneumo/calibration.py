"""Calibration and operating points: temperature and bias fitting, ECE, reliability bins and threshold choice.

Everything here works on plain numpy arrays and needs only numpy and scipy, because training imports it to set the
temperature and threshold that travel in the model file.

Conventions shared by every function:

- ``logits`` is N x C; column 0 is NORMAL. The probability of pneumonia is the one :mod:`pneumo.probability`
  defines (``calibrated_probability``), for the binary task (C=2) and the subtype task (C=3) alike.
- ``y`` is the binary truth, 1 = pneumonia; ``prob`` is the probability of pneumonia.
- a case is predicted positive when ``prob >= threshold``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pneumo.errors import ConfigError, DataError
from pneumo.probability import pneumonia_log_odds

T_BOUNDS = (0.05, 20.0)


def fit_calibration(logits: np.ndarray, y_pneumonia: np.ndarray) -> tuple[float, float]:
    """Temperature ``T`` and bias ``b`` of ``sigmoid(z / T + b)`` on the pneumonia log-odds ``z`` (Platt scaling).

    The bias matters here: class balancing during training (weights or oversampling) teaches the network a 50:50
    prior, while validation holds about three pneumonia images per normal one; a temperature alone cannot move
    the probabilities by a prior shift, a bias can. Fitted by minimising the validation NLL (L-BFGS on log T, b).
    """
    from scipy.optimize import minimize

    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be N x C with C >= 2, got shape {logits.shape}")
    z = pneumonia_log_odds(logits)
    y = np.asarray(y_pneumonia, dtype=np.float64)

    def loss(params: np.ndarray) -> float:
        t = math.exp(params[0])
        s = z / t + params[1]
        # log(1 + exp(-s)) for positives, log(1 + exp(s)) for negatives, computed stably
        return float(np.mean(np.logaddexp(0.0, np.where(y > 0, -s, s))))

    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize(loss, x0=np.array([0.0, 0.0]), method="L-BFGS-B", bounds=[(lo, hi), (-10.0, 10.0)])
    return float(math.exp(res.x[0])), float(res.x[1])


def bin_index(prob: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Equal-width bin of each probability in [0, 1]; 1.0 falls in the last bin."""
    idx = np.floor(np.asarray(prob, dtype=np.float64) * n_bins).astype(np.int64)
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(prob: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
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


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the binary pneumonia probability: ``sum_b n_b / N * |mean(prob)_b - mean(y)_b|``, equal-width bins."""
    prob = np.asarray(prob, dtype=np.float64)
    if prob.size == 0:
        return float("nan")
    idx = bin_index(prob, n_bins)
    gap = np.bincount(idx, weights=prob - np.asarray(y, dtype=np.float64), minlength=n_bins)
    return float(np.abs(gap).sum() / prob.size)


def choose_threshold(y: np.ndarray, prob: np.ndarray, target_sensitivity: float = 0.98) -> float:
    """The highest threshold whose sensitivity on these data is >= ``target_sensitivity``.

    Sensitivity only changes at the positives' probabilities, so the answer is one of them: with the positives
    sorted in decreasing order, the first k-th one where ``k / n_pos >= target``. Predicting positive at
    ``prob >= threshold`` keeps every positive tied with it, so the achieved sensitivity is at least ``k / n_pos``;
    any higher threshold drops that k-th positive and so falls below the target. Negatives do not enter: among
    thresholds meeting the target the highest one already has the best specificity.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ConfigError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    y = np.asarray(y).astype(bool)
    pos = np.sort(np.asarray(prob, dtype=np.float64)[y])[::-1]
    if pos.size == 0:
        raise DataError("choose_threshold needs at least one pneumonia case")
    # Same float division as operating_point, so "achieved >= target" holds exactly as it is later checked.
    sens = np.arange(1, pos.size + 1) / pos.size
    k = int(np.argmax(sens >= target_sensitivity))
    return float(pos[k])


def operating_point(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at ``threshold`` (positive when ``prob >= threshold``); undefined rates are NaN."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(prob, dtype=np.float64) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))

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
