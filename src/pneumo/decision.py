"""The decision rule, in one place: what a threshold may be, when a probability is a positive call, and the
three-way decision of a site's REFER band.

Every caller (predict, evaluate, the shift suite, finalisation, site adaptation, the metrics) decides through
these functions, so the rule "pneumonia when the calibrated probability is at or above the threshold" is written
once and a change to it is seen everywhere. Pure numpy: the inference path imports it.
"""

from __future__ import annotations

import math

import numpy as np

from pneumo.errors import ConfigError
from pneumo.labels import DECISIONS

# Decision codes: DECISIONS[code] is the label (NORMAL 0, PNEUMONIA 1, REFER 2).
NORMAL_CODE, PNEUMONIA_CODE, REFER_CODE = range(len(DECISIONS))


def check_threshold(threshold: float, what: str = "threshold") -> float:
    """``threshold`` as a float when it is a probability in [0, 1]; otherwise a :class:`ConfigError` naming
    ``what`` (e.g. ``"--threshold"``). NaN and infinities are refused."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number between 0 and 1, got {threshold!r}") from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ConfigError(f"{what} must be between 0 and 1, got {threshold}")
    return t


def is_positive(prob, threshold: float) -> np.ndarray:
    """The pneumonia call: ``prob >= threshold`` (a probability exactly at the threshold is positive)."""
    return np.asarray(prob, dtype=np.float64) >= threshold


def decision_codes(prob, threshold: float, band: tuple[float, float] | None = None) -> np.ndarray:
    """0 NORMAL / 1 PNEUMONIA at ``threshold``; with a REFER ``band`` ``(low, high)``: NORMAL below ``low``,
    PNEUMONIA above ``high``, 2 REFER from ``low`` to ``high`` inclusive."""
    p = np.asarray(prob, dtype=np.float64)
    if band is None:
        return is_positive(p, threshold).astype(np.int64)
    low, high = band
    return np.where(p < low, NORMAL_CODE, np.where(p > high, PNEUMONIA_CODE, REFER_CODE)).astype(np.int64)


def decide(prob: float, threshold: float, band: tuple[float, float] | None = None) -> str:
    """The decision label of one probability (see :func:`decision_codes`)."""
    return DECISIONS[int(decision_codes(np.array([prob]), threshold, band)[0])]


def flip_rate(calls, reference) -> float:
    """Share of calls that differ from the reference calls (0.0 when there are none)."""
    calls, reference = np.asarray(calls), np.asarray(reference)
    return float(np.mean(calls != reference)) if calls.size else 0.0
