"""Domain guard: two answers about an image, read from the network's feature space.

- ``not_pediatric``: not a pediatric chest X-ray at all (a photograph, a document, an adult film, another body
  part). The result is withheld. The *pediatric guard* answers it: fitted on training X-rays under the framing
  shifts of the suite (:mod:`pneumo.evaluation.shifts`: zoomed out with a margin, zoomed in, squeezed, moved, cropped),
  so a
  child's film framed differently still counts as a child's film (:mod:`pneumo.domain_fit` fits it onto an
  existing model file).
- ``unusual_acquisition``: a pediatric chest X-ray, but framed or exposed unlike the validation films. The result
  stands, with a note. The *acquisition guard* answers it: fitted on the training X-rays as they are, so it reacts
  to framing and exposure.
- ``typical``: neither.

A model file made before the two answers has the acquisition guard alone, and keeps its single answer: flagged is
``not_pediatric`` (result withheld, as it always was), else ``typical``.

Each guard standardises the features per dimension with the training statistics and projects them on their top
principal components; an image's distance combines the Mahalanobis distance inside that subspace (Hotelling's
T^2) with the squared residual outside it (Q statistic), each scaled to mean 1 on the training features so that
neither dominates. The cut-off is a quantile of held-out distances; the stored sorted held-out distances turn a
distance into ``domain_score``: the fraction of held-out X-rays that lie further out (1 = typical, near 0 =
unlike anything the model was validated on). numpy only: this runs on the inference path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from pneumo.modelfile import DomainGuard, ModelFileError

_EPS = 1e-6

TYPICAL, UNUSUAL_ACQUISITION, NOT_PEDIATRIC = "typical", "unusual_acquisition", "not_pediatric"
DOMAINS = (TYPICAL, UNUSUAL_ACQUISITION, NOT_PEDIATRIC)
Domain = Literal["typical", "unusual_acquisition", "not_pediatric"]
# Array name prefixes in arrays.npz: the acquisition guard keeps the names every model file has had.
ACQUISITION, PEDIATRIC = "domain_", "pediatric_"
_PARTS = ("mean", "components", "variances", "scale", "val_distances")


def _standardize(features: np.ndarray, arrays: dict[str, np.ndarray], prefix: str = ACQUISITION) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f"{prefix}feature_mean" not in arrays:  # model files written before the guard standardised its features
        return f
    return (f - arrays[f"{prefix}feature_mean"]) / arrays[f"{prefix}feature_std"]


def _distance(features: np.ndarray, arrays: dict[str, np.ndarray], prefix: str = ACQUISITION) -> np.ndarray:
    a = {k: arrays[prefix + k] for k in ("mean", "components", "variances", "scale")}
    f = _standardize(features, arrays, prefix) - a["mean"]
    z = f @ a["components"].T
    t2 = (z**2 / a["variances"]).sum(1) / a["scale"][0]
    resid = f - z @ a["components"]
    q = (resid**2).sum(1) / a["scale"][1]
    return np.sqrt(0.5 * (t2 + q))


def _fit(
    train_features: np.ndarray, held_out_features: np.ndarray, components: int, quantile: float, prefix: str
) -> tuple[DomainGuard, dict[str, np.ndarray]]:
    raw = np.asarray(train_features, dtype=np.float64)
    # Standardised so that no channel dominates by scale alone (mean and std features differ by orders).
    scaling = {f"{prefix}feature_mean": raw.mean(0), f"{prefix}feature_std": raw.std(0) + 1e-6}
    x = _standardize(raw, scaling, prefix)
    mean = x.mean(0)
    xc = x - mean
    k = int(min(components, x.shape[0] - 1, x.shape[1]))
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:k]
    var = s[:k] ** 2 / max(1, x.shape[0] - 1) + _EPS
    z = xc @ comps.T
    t2 = (z**2 / var).sum(1)
    q = ((xc - z @ comps) ** 2).sum(1)
    arrays = {
        **scaling,
        f"{prefix}mean": mean,
        f"{prefix}components": comps,
        f"{prefix}variances": var,
        f"{prefix}scale": np.array([max(t2.mean(), _EPS), max(q.mean(), _EPS)]),
    }
    held_out = np.sort(_distance(held_out_features, arrays, prefix))
    arrays[f"{prefix}val_distances"] = held_out
    cutoff = float(np.quantile(held_out, quantile))
    guard = DomainGuard(
        components=k, cutoff=cutoff, quantile=quantile, validation_flag_rate=float((held_out > cutoff).mean())
    )
    return guard, {k_: v.astype(np.float32) for k_, v in arrays.items()}


def fit_domain_guard(
    train_features: np.ndarray, val_features: np.ndarray, components: int = 32, quantile: float = 0.98
) -> tuple[DomainGuard, dict[str, np.ndarray]]:
    """Fit the acquisition guard on training features; set the cut-off at ``quantile`` of the validation
    distances."""
    return _fit(train_features, val_features, components, quantile, ACQUISITION)


def fit_pediatric_guard(
    train_features: np.ndarray, held_out_features: np.ndarray, components: int = 32, quantile: float = 0.98
) -> tuple[DomainGuard, dict[str, np.ndarray]]:
    """Fit the pediatric guard: ``train_features`` of training X-rays under the framing shifts (and as they are),
    the cut-off at ``quantile`` of the distances of ``held_out_features`` (other patients, the same conditions).
    Its arrays are named ``pediatric_*``; put the guard in the acquisition guard's ``pediatric`` field."""
    return _fit(train_features, held_out_features, components, quantile, PEDIATRIC)


def _check(
    features: np.ndarray, guard: DomainGuard, arrays: dict[str, np.ndarray], prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    d = _distance(features, arrays, prefix)
    held_out = arrays[f"{prefix}val_distances"]
    score = 1.0 - np.searchsorted(held_out, d, side="left") / len(held_out)
    return d <= guard.cutoff, score.astype(np.float64)


def domain_check(
    features: np.ndarray, guard: DomainGuard, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(within the cut-off, domain_score)`` of the acquisition guard for a batch of pooled features."""
    return _check(features, guard, arrays, ACQUISITION)


def classify_domain(
    features: np.ndarray, guard: DomainGuard, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(domain, in_domain, domain_score)`` for a batch of pooled features: ``domain`` one of :data:`DOMAINS`,
    ``in_domain`` = not ``not_pediatric``, and the score of the guard that decides ``in_domain``."""
    typical, score = _check(features, guard, arrays, ACQUISITION)
    if guard.pediatric is None:  # one guard, one answer, as model files made before the two answers behave
        return np.where(typical, TYPICAL, NOT_PEDIATRIC), typical, score
    pediatric, score = _check(features, guard.pediatric, arrays, PEDIATRIC)
    domain = np.where(pediatric, np.where(typical, TYPICAL, UNUSUAL_ACQUISITION), NOT_PEDIATRIC)
    return domain, pediatric, score


def _check_one(guard: DomainGuard, arrays: dict[str, np.ndarray], prefix: str, dim: int | None) -> None:
    """Raise ValueError naming the first array of one guard that is missing, misshapen, not finite or out of range."""
    missing = [prefix + k for k in _PARTS if prefix + k not in arrays]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing")
    a = {k: np.asarray(arrays[prefix + k]) for k in _PARTS}
    for name in (f"{prefix}feature_mean", f"{prefix}feature_std"):
        if name in arrays:
            a[name.removeprefix(prefix)] = np.asarray(arrays[name])
    if ("feature_mean" in a) != ("feature_std" in a):
        raise ValueError(f"{prefix}feature_mean and {prefix}feature_std go together")
    for k, v in a.items():
        if v.dtype.kind not in "fiu" or not np.isfinite(v).all():
            raise ValueError(f"{prefix}{k} is not all finite numbers")
    d = a["mean"].shape[0] if a["mean"].ndim == 1 else -1
    shapes = {"mean": (d,), "components": (guard.components, d), "variances": (guard.components,), "scale": (2,)}
    shapes |= {"feature_mean": (d,), "feature_std": (d,)} if "feature_mean" in a else {}
    for k, shape in shapes.items():
        if d < 1 or a[k].shape != shape:
            raise ValueError(f"{prefix}{k} has shape {a[k].shape}, expected {shape}")
    if dim is not None and d != dim:
        raise ValueError(f"{prefix}mean has {d} features, the network gives {dim}")
    for k in ("variances", "scale", "feature_std"):
        if k in a and not (a[k] > 0).all():
            raise ValueError(f"{prefix}{k} has values <= 0")
    held_out = a["val_distances"]
    if held_out.ndim != 1 or held_out.size == 0 or (np.diff(held_out) < 0).any() or (held_out < 0).any():
        raise ValueError(f"{prefix}val_distances must be a non-empty sorted list of distances >= 0")


def check_guard_arrays(
    guard: DomainGuard, arrays: dict[str, np.ndarray], *, feature_dim: int | None = None, source: Any = "model"
) -> None:
    """Refuse, with one :class:`ModelFileError` line naming ``source``, guard arrays that would not give a true
    answer: missing, misshapen, not finite, zero spreads, unsorted held-out distances. A NaN here would compare
    as "within the cut-off" never, or always, silently; ``feature_dim`` (the network's) is checked when given."""
    try:
        _check_one(guard, arrays, ACQUISITION, feature_dim)
        if guard.pediatric is not None:
            _check_one(guard.pediatric, arrays, PEDIATRIC, feature_dim)
    except ValueError as exc:
        raise ModelFileError(f"{source}: invalid domain-guard arrays: {exc}") from exc


def domain_rates(predictions: Iterable[Any]) -> dict[str, float]:
    """``flagged_not_pediatric`` and ``flagged_unusual_acquisition``: the shares of the predictions with a domain
    answer (``Prediction.domain`` not None) given each answer; NaN for both when none has one (errors only, or a
    model without a guard). For ``pneumo robustness``, per condition."""
    answers = [d for p in predictions if (d := getattr(p, "domain", None)) is not None]
    n = len(answers)
    return {
        "flagged_not_pediatric": answers.count(NOT_PEDIATRIC) / n if n else math.nan,
        "flagged_unusual_acquisition": answers.count(UNUSUAL_ACQUISITION) / n if n else math.nan,
    }
