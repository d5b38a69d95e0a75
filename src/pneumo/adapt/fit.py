"""The statistics of ``pneumo adapt`` (:mod:`pneumo.adapt.site`): refit the calibration, the operating threshold and,
optionally, a REFER band on a hospital's own labelled sample, with honest figures.

Why: a threshold chosen on one site's validation data does not hold at another (different prevalence, exposure,
framing); departments are told to validate locally. Everything here goes through the same ONNX path as
``pneumo predict``; the network is never retrained, only the two calibration numbers, the threshold and the band.

Honesty of the figures:

- the sample is split k-fold **by patient**; calibration (temperature and bias, :func:`pneumo.evaluation.calibration.
  fit_calibration`), threshold (:func:`pneumo.evaluation.calibration.choose_threshold`) and band are fitted on k-1 folds
  and measured on the held-out fold; the figures pool the held-out folds;
- 95 % intervals are a bootstrap over **patients** (images of one patient are not independent), resampled within
  each class of patient so the class mix stays the sample's;
- the sample is called too small when the interval on sensitivity does not exclude ``target - 0.05``; the lower
  bound used is the smaller of the bootstrap one and the exact (Clopper-Pearson) one, because a percentile bootstrap
  of 20 / 20 detected positives is the degenerate interval [1, 1].

The REFER band (``refer_error``) is class-conditional split conformal prediction: NORMAL stays a plausible answer
up to the ⌈(n+1)(1-α)⌉-th smallest probability among the site's normal images, PNEUMONIA from the same order
statistic counted from the top among its pneumonia images; where both are plausible the tool refers. For a new
study exchangeable with the site's, at most α of pneumonia cases get a confident NORMAL and at most α of normal
cases a confident PNEUMONIA (finite-sample, whatever the network). Calibration is monotone in the network's
log-odds, so fitting it on the same sample leaves this guarantee intact.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumo.decision import NORMAL_CODE, PNEUMONIA_CODE, REFER_CODE, decision_codes
from pneumo.errors import InputError
from pneumo.evaluation.calibration import choose_threshold, fit_calibration
from pneumo.evaluation.intervals import bootstrap
from pneumo.probability import sigmoid


class AdaptError(InputError):
    """A site sample, patients file or ``pneumo adapt`` option that cannot be used as given; one line, a usage
    error (the CLI exits 2). A ``ValueError`` too."""


DEFAULT_FOLDS = 5
SENSITIVITY_MARGIN = 0.05  # the interval on sensitivity must exclude target - this margin
_EPS = 1e-9


@dataclass(frozen=True)
class SiteFit:
    """Calibration ``sigmoid(z / temperature + bias)``, threshold and optional REFER band fitted on site data."""

    temperature: float
    bias: float
    threshold: float
    band: tuple[float, float] | None = None

    def probability(self, z: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(z, dtype=np.float64) / self.temperature + self.bias)

    def decide(self, z: np.ndarray, three_way: bool = False) -> np.ndarray:
        """The decision codes (:func:`pneumo.decision.decision_codes`) of log-odds ``z``: NORMAL / PNEUMONIA at
        the threshold, and REFER in the band with ``three_way``."""
        return decision_codes(self.probability(z), self.threshold, self.band if three_way else None)


def _logits(z: np.ndarray) -> np.ndarray:
    # fit_calibration takes N x C logits; [0, z] has pneumonia log-odds z.
    z = np.asarray(z, dtype=np.float64)
    return np.column_stack([np.zeros_like(z), z])


def conformal_band(y: np.ndarray, prob: np.ndarray, alpha: float, threshold: float) -> tuple[float, float]:
    """The REFER band ``(low, high)``: class-conditional split-conformal thresholds at level ``alpha``.

    ``high`` is the ⌈(n_normal+1)(1-α)⌉-th smallest normal probability (1 when there are too few normal images to
    certify any confident PNEUMONIA), ``low`` the same order statistic of the pneumonia probabilities counted from
    the largest (0 when too few pneumonia images to certify any confident NORMAL). When ``low > high`` no study has
    both answers plausible; the band shrinks to one cut between them (at the threshold, clipped into the gap).
    """
    if not 0.0 < alpha < 0.5:
        raise AdaptError(f"the REFER error bound must be between 0 and 0.5, got {alpha}")
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=np.float64)
    normals, pneumonias = np.sort(prob[~y]), np.sort(prob[y])

    def rank(n: int) -> int:
        return math.ceil((n + 1) * (1.0 - alpha) - _EPS)

    k = rank(normals.size)
    high = float(normals[k - 1]) if k <= normals.size else 1.0
    k = rank(pneumonias.size)
    low = float(pneumonias[pneumonias.size - k]) if k <= pneumonias.size else 0.0
    if low <= high:
        return low, high
    cut = min(max(threshold, high), low)
    return cut, cut


def min_class_size(alpha: float) -> int:
    """The fewest images of a class for which the conformal order statistic exists at level ``alpha``."""
    return math.ceil((1.0 - alpha) / alpha - _EPS)


def fit_site(z: np.ndarray, y: np.ndarray, target_sensitivity: float, refer_error: float | None = None) -> SiteFit:
    """Temperature and bias (Platt, on the network's log-odds ``z``), the threshold for ``target_sensitivity`` and,
    with ``refer_error``, the REFER band, all on these data."""
    y = np.asarray(y).astype(np.int64)
    if y.min(initial=1) == y.max(initial=0):
        raise AdaptError("a site sample needs both NORMAL and PNEUMONIA images")
    temperature, bias = fit_calibration(_logits(z), y)
    fit = SiteFit(temperature, bias, 0.5)
    prob = fit.probability(z)
    # A probability that rounds to 0 or 1 would give a threshold a model file refuses (it must lie strictly inside).
    threshold = float(np.clip(choose_threshold(y, prob, target_sensitivity), _EPS, 1.0 - _EPS))
    band = None if refer_error is None else conformal_band(y, prob, refer_error, threshold)
    return SiteFit(temperature, bias, threshold, band)


@dataclass
class CrossValidation:
    """Out-of-fold probabilities and decisions (each image scored by the fit on the folds without its patient):
    ``decision`` two-way at each fold's threshold, ``decision3`` three-way with each fold's band (or None)."""

    folds: int
    prob: np.ndarray
    decision: np.ndarray
    decision3: np.ndarray | None = None
    fits: list[SiteFit] = field(default_factory=list)
    fold: np.ndarray | None = None  # the held-out fold of each image


def cross_validate(
    z: np.ndarray,
    y: np.ndarray,
    patients: np.ndarray,
    target_sensitivity: float,
    refer_error: float | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> CrossValidation:
    """k-fold by patient, stratified by class (scikit-learn's ``StratifiedGroupKFold``): fit on k-1 folds, score
    the held-out one. ``k`` drops to the number of patients of the rarer class when that is smaller."""
    from sklearn.model_selection import StratifiedGroupKFold

    z, y, patients = np.asarray(z, dtype=np.float64), np.asarray(y).astype(np.int64), np.asarray(patients)
    per_class = [np.unique(patients[y == c]).size for c in (0, 1)]
    k = min(folds, *per_class)
    if k < 2:
        raise AdaptError(
            f"the site sample has {per_class[0]} normal and {per_class[1]} pneumonia patient(s): cross-validation "
            "by patient needs at least 2 of each (a few hundred studies are advised)"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    prob, decision = np.empty(y.size), np.empty(y.size, dtype=np.int64)
    decision3, fold = np.empty(y.size, dtype=np.int64), np.empty(y.size, dtype=np.int64)
    fits = []
    for i, (train, test) in enumerate(splitter.split(z, y, patients)):
        if np.unique(y[train]).size < 2:
            raise AdaptError(f"fold {i + 1} of {k} leaves one class out of its fitting data: too few patients")
        fit = fit_site(z[train], y[train], target_sensitivity, refer_error)
        prob[test], decision[test] = fit.probability(z[test]), fit.decide(z[test])
        decision3[test], fold[test] = fit.decide(z[test], three_way=True), i
        fits.append(fit)
    return CrossValidation(k, prob, decision, decision3 if refer_error is not None else None, fits, fold)


def patient_bootstrap_weights(y: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """B x N: how often each image's patient was drawn in each resample, patients resampled with replacement
    within their class (a patient with any pneumonia image counts as a pneumonia patient)."""
    _, inverse = np.unique(np.asarray(patients), return_inverse=True)
    n_pat = int(inverse.max()) + 1
    pclass = np.zeros(n_pat, dtype=np.int64)
    np.maximum.at(pclass, inverse, np.asarray(y).astype(np.int64))
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, n_pat))
    rows = np.arange(n_boot)[:, None]
    for c in (0, 1):
        members = np.flatnonzero(pclass == c)
        if members.size:
            draws = members[rng.integers(0, members.size, size=(n_boot, members.size))]
            np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1.0)
    return counts[:, inverse]


def weighted_figures(
    y: np.ndarray, prob: np.ndarray, decision: np.ndarray, weights: np.ndarray, three_way: bool = False
) -> dict[str, Any]:
    """Sensitivity, specificity, ROC and PR AUC, ECE, Brier and, for three-way decisions, the referred share and
    the miss and false-alarm rates of the confident calls; one value per row of ``weights`` (case weights)."""
    from pneumo.evaluation.metrics import weighted_metrics

    y = np.asarray(y).astype(bool)
    w = np.atleast_2d(weights)
    pos, neg = w @ y, w @ ~y
    base = weighted_metrics(y, np.asarray(prob, dtype=np.float64), 0.5, w)  # threshold-free parts only
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "sensitivity": w @ (y & (decision == PNEUMONIA_CODE)) / pos,
            "specificity": w @ (~y & (decision == NORMAL_CODE)) / neg,
            "roc_auc": base["roc_auc"],
            "pr_auc": base["pr_auc"],
            "ece": base["ece"],
            "brier": base["brier"],
        }
        if three_way:
            out["referred"] = w @ (decision == REFER_CODE) / w.sum(axis=1)
            out["miss_rate"] = w @ (y & (decision == NORMAL_CODE)) / pos
            out["false_alarm_rate"] = w @ (~y & (decision == PNEUMONIA_CODE)) / neg
    return out


def figures_with_intervals(
    y: np.ndarray,
    prob: np.ndarray,
    decision: np.ndarray,
    patients: np.ndarray,
    *,
    three_way: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each figure as ``{"value", "lo", "hi"}`` (:meth:`pneumo.evaluation.intervals.Interval.as_json`), the interval
    a patient-level percentile bootstrap 95 % (:func:`pneumo.evaluation.intervals.bootstrap`)."""
    weights = patient_bootstrap_weights(y, patients, n_boot, seed)
    ivs = bootstrap(lambda w: weighted_figures(y, prob, decision, w, three_way), [weights], len(y))
    return {k: iv.as_json() for k, iv in ivs.items()}


def exact_lower_bound(successes: int, n: float, level: float = 0.95) -> float:
    """Clopper-Pearson lower bound of a binomial proportion (``successes`` may be fractional when planning)."""
    from scipy.stats import beta

    if successes <= 0:
        return 0.0
    return float(beta.ppf((1 - level) / 2, successes, n - successes + 1))


def positives_needed(sensitivity: float, floor: float, level: float = 0.95, limit: int = 1_000_000) -> int | None:
    """The fewest positives for which the exact lower bound at ``sensitivity`` exceeds ``floor``; None if never."""
    if sensitivity <= floor:
        return None
    n = 1
    while exact_lower_bound(sensitivity * n, n, level) <= floor:
        n *= 2
        if n > limit:
            return None
    lo, hi = n // 2, n  # the bound grows with n: bisect for the first n that clears the floor
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if exact_lower_bound(sensitivity * mid, mid, level) > floor else (mid, hi)
    return hi


def sample_size_warning(
    sens: dict[str, float], n_pos: int, tp: int, target_sensitivity: float, margin: float = SENSITIVITY_MARGIN
) -> str | None:
    """The loud warning of ``pneumo adapt`` when the interval on sensitivity does not exclude ``target - margin``,
    with how many more pneumonia studies would make it do so; None when the sample is large enough."""
    floor = target_sensitivity - margin
    lower = min(sens["lo"], exact_lower_bound(tp, n_pos))
    if lower > floor:
        return None
    head = (
        f"SITE SAMPLE TOO SMALL: the 95 % interval on sensitivity reaches down to {lower:.3f}, not above "
        f"{floor:.3f} (target {target_sensitivity:.3f} - {margin:.2f}), with {n_pos} pneumonia image(s)."
    )
    planned = min(sens["value"], target_sensitivity)
    need = positives_needed(planned, floor)
    if need is None:
        return head + (
            f" The cross-validated sensitivity ({sens['value']:.3f}) is itself too low: more studies will not fix "
            "this; the model does not reach the target at this site."
        )
    return head + (
        f" About {max(need - n_pos, 1)} more pneumonia studies are needed (at least {need} in all, if the "
        f"sensitivity holds at {planned:.3f}). Do not rely on this site calibration yet."
    )


def refer_warnings(n_normal: int, n_pneumonia: int, alpha: float) -> list[str]:
    """Which confident decisions the REFER band cannot certify at this sample size."""
    need = min_class_size(alpha)
    out = []
    if n_normal < need:
        out.append(
            f"REFER: {n_normal} normal image(s) are fewer than the {need} needed to bound false alarms at "
            f"{alpha:g}: no study will be called PNEUMONIA with confidence, all such go to REFER."
        )
    if n_pneumonia < need:
        out.append(
            f"REFER: {n_pneumonia} pneumonia image(s) are fewer than the {need} needed to bound misses at "
            f"{alpha:g}: no study will be called NORMAL with confidence, all such go to REFER."
        )
    return out


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
