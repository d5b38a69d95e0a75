"""Calibration and operating points: temperature and bias fitting and threshold choice (counting and ECE are
:mod:`pneumo.evaluation.metrics`).

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
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pneumo.decision import is_positive
from pneumo.errors import ConfigError, DataError
from pneumo.evaluation.summary import shift_summary
from pneumo.probability import pneumonia_log_odds

T_BOUNDS = (0.05, 20.0)


class OperatingRule(NamedTuple):
    """How the threshold is chosen (:class:`pneumo.config.TrainConfig` ``operating_rule``)."""

    name: str = "worst_case"  # or "pooled"
    target_sensitivity: float = 0.98
    target_specificity: float = 0.90


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


def worst_case_rates(
    y: np.ndarray, probs: dict[str, np.ndarray], threshold: float, *, order: Sequence[str] = ()
) -> dict:
    """Sensitivity and specificity at ``threshold`` under each condition (the same cases, ``probs`` per condition),
    their minimum over the conditions and which condition gave it (``sensitivity_of``, ``specificity_of``), by
    :func:`pneumo.evaluation.summary.shift_summary`: NaN rates skipped, a tie named by ``order`` then by name."""
    y = np.asarray(y).astype(bool)
    per = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, p in probs.items():
            call = is_positive(p, threshold)
            per[name] = {"sensitivity": _share(call[y]), "specificity": _share(~call[~y])}
    summary = shift_summary(per, ("sensitivity", "specificity"), order=order)
    out: dict = {}
    for key in ("sensitivity", "specificity"):
        out[key], out[f"{key}_of"] = summary.worst.get(key, float("nan")), summary.worst_of.get(key)
    return out


def _share(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


def choose_threshold_worst_case(
    y: np.ndarray, probs: dict[str, np.ndarray], target_sensitivity: float, target_specificity: float
) -> float:
    """The threshold that keeps the largest margin to both targets in the worst condition:
    ``argmax_t min_c min(sens_c(t) - target_sensitivity, spec_c(t) - target_specificity)`` over the conditions
    ``c`` (the same cases under each, e.g. clean validation and its framing-shifted copies).

    A threshold fitted on pooled conditions can meet its sensitivity on average while one framing loses
    specificity; this one looks at each condition's worse side. The objective only changes at the observed
    probabilities, so it is evaluated there; of the best thresholds the highest run of them is taken, and its
    middle returned, away from the cases at its ends.
    """
    for name, t in (("target_sensitivity", target_sensitivity), ("target_specificity", target_specificity)):
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"{name} must be in (0, 1], got {t}")
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise DataError("choose_threshold_worst_case needs both normal and pneumonia cases")
    candidates = np.unique(np.concatenate([np.asarray(p, dtype=np.float64) for p in probs.values()]))
    margin = np.full(candidates.size, np.inf)
    for p in probs.values():
        p = np.asarray(p, dtype=np.float64)
        pos, neg = np.sort(p[y]), np.sort(p[~y])
        # positive at p >= t: sensitivity counts positives at or above t, specificity negatives below it
        sens = 1.0 - np.searchsorted(pos, candidates, side="left") / pos.size
        spec = np.searchsorted(neg, candidates, side="left") / neg.size
        margin = np.minimum(margin, np.minimum(sens - target_sensitivity, spec - target_specificity))
    best = np.flatnonzero(margin == margin.max())
    last = best[-1]
    first = last
    while first - 1 in best:  # the run of equal best candidates that ends at the highest one
        first -= 1
    # The objective is constant on (candidates[first - 1], candidates[last]]: take that interval's middle.
    low = candidates[first - 1] if first > 0 else 0.0
    return float((low + candidates[last]) / 2)
