"""Calibration and operating points: temperature and bias fitting and threshold choice (counting and ECE are
:mod:`pneumo.metrics`).

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
